"""htsr: Heavy-Tailed Self-Regularization diagnostics from weights alone."""

__version__ = "0.1.0"
