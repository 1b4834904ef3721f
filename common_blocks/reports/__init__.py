"""What a person looks at: mask overlays, figures, the dataset overview, the out-of-fold HTML report
the single-image prediction overlay, and the config reference page (``docs/config.md``). May import every other sub-package."""
