"""Camera model, rotation helpers and pose metrics (torch, batched)."""
