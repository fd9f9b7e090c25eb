"""Training stage (cxr.train): the seed's two EfficientNet variants. Core: ``fit_variant``."""
