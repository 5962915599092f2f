"""Training loops: diffusion models from scratch (train_model) and Learning-to-Cache routers (train_router)."""
