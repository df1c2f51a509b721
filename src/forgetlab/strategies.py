"""What each data-parallel strategy (`distributed.strategy`, forgetlab.distributed) runs and
supports; no torch here: the config check and the workflow's planning read it.

Under fsdp a component is supported when it acts on the model only through its forward pass and
the loss, and keeps no state that depends on a rank's data; the others are refused by the config
check (fsdp_refusals, called by forgetlab.config.check_config), with the reason below.
"""

from __future__ import annotations

STRATEGIES = ("ddp", "fsdp")
STAGES = ("pretrain", "finetune")  # the stages that run data-parallel under ddp


def data_parallel_stages(strategy: str) -> tuple[str, ...]:
    """The stages whose jobs run as several workers: unlearn too under fsdp."""
    return STAGES + ("unlearn",) if strategy == "fsdp" else STAGES


FSDP_REGULARIZERS = ("none", "dropout", "weight_decay", "z_loss", "label_smoothing", "confidence_penalty")
FSDP_METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_nll", "idk_dpo", "relabel", "ce_u", "wga",
                "undial", "satimp", "flat")
FSDP_REASONS = {
    "lora": "wraps the model in adapters and merges them into the weights (not on sharded weights)",
    "allora": "wraps the model in adapters and scales their gradients (not on sharded weights)",
    "send": "drops and rescales weights between steps (not on sharded weights)",
    "send_mlp": "drops and rescales weights between steps (not on sharded weights)",
    "sparsity": "masks the weights after each step (not on sharded weights)",
    "swa": "keeps a running average of the weights (not of sharded weights)",
    "multi_sample_dropout": "calls the model's head outside its forward pass (a sharded head is not gathered there)",
    "nested_dropout": "calls the model's head outside its forward pass (a sharded head is not gathered there)",
    "pdu": "its dual variable follows each rank's data and would need syncing",
    "rmu": "steers one layer's activations through hooks and freezes the other layers (not tested sharded)",
    "task_vector": "turns the trained weights into a negated task vector (not on sharded weights)",
}


def fsdp_refusal(kind: str, name: str) -> str | None:
    """Why a regularizer / method / plug-in is refused under fsdp, or None if it is supported."""
    supported = {"regularizer": FSDP_REGULARIZERS, "method": FSDP_METHODS, "plugin": ()}[kind]
    if name in supported:
        return None
    if kind == "plugin":
        return "plug-ins read or change the gradients between steps with data-dependent state (masks, projections)"
    return FSDP_REASONS.get(name, f"{kind} {name!r} is not known to support sharded weights")


def fsdp_refusals(config: dict) -> str | None:
    """Under `distributed.strategy: fsdp`, the first regularizer, method or plug-in that FSDP does
    not support, as "<config key>: <why>"; None when every component is supported (or no fsdp)."""
    if (config.get("distributed") or {}).get("strategy") != "fsdp":
        return None
    found = []
    for entry, value in config["regularizers"].items():
        key, specs = (f"regularizers.{entry}.regularizers", value["regularizers"]) if isinstance(value, dict) \
            else (f"regularizers.{entry}", value)
        found += [(f"{key}[{i}].name", "regularizer", spec["name"]) for i, spec in enumerate(specs)]
    for entry, spec in config["methods"].items():
        found.append((f"methods.{entry}.name", "method", spec["name"]))
        found += [(f"methods.{entry}.plugins[{i}]", "plugin", p if isinstance(p, str) else p["name"])
                  for i, p in enumerate(spec.get("plugins", []))]
    for key, kind, name in found:
        reason = fsdp_refusal(kind, name)
        if reason is not None:
            return f"{key}: {name} is not supported with distributed.strategy fsdp: {reason}"
    return None
