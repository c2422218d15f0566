"""Training: the loop, engines (plain torch / DeepSpeed behind one interface), optimizer builders.

The modules here import no Ray: distributed state comes from ``torch.distributed``, which Ray
Train's ``TorchTrainer`` initialises on each worker (see ``docs/engines.md``).
"""
