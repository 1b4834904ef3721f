"""What a person looks at: mask overlays, figures, the dataset overview, the out-of-fold HTML report
and the single-image prediction overlay. May import every other sub-package."""
