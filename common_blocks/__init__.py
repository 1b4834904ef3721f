"""Severstal steel defect detection: data formats, training, ensembling and scoring.

Sub-packages, each importing only those before it: ``data`` -> ``evaluation`` -> ``training`` ->
``inference`` -> ``deploy`` -> ``cluster`` -> ``pseudo`` -> ``reports``. The modules at this level
(``errors``, ``files``, ``output_folders``, ``one_writer``, ``config_io``, ``run_folder``,
``backend_names``, ``torchvision_compat``) import no sub-package; ``cli`` sits above everything and loads each
sub-package only when a command needs it. Importing ``common_blocks`` loads nothing else.
"""
