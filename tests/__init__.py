"""The test suite: one folder per sub-package of ``common_blocks``, command-line contract tests in
``cli/``; shared fixtures in ``conftest.py``, shared helpers in the modules beside it."""
