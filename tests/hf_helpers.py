"""Helpers shared by the tests that build Hugging Face reference models (torch imported lazily)."""


def randomise_biases_and_norms(model, std=0.1):
    """Random nonzero biases and RMSNorm weights (HF initialises them to 0 and 1), so parity
    tests exercise them."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, std)
            elif "norm" in name:
                p.copy_(1.0 + std * torch.randn_like(p))
