"""Language models as models, not weights: loading one with transformers and measuring perplexity."""
