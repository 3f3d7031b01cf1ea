"""Rematerialisation policies: which named activations a layer keeps for the backward pass.

The layers tag their matmul outputs with jax.ad_checkpoint.checkpoint_name: query_proj, key_proj, value_proj,
context (attention output before the out projection), out_proj, mlpwi (each MLP input projection after its
activation's input) and mlpwo. A policy saves some of them in device memory, offloads some to pinned host
memory (moved back for the backward pass), and recomputes the rest from the layer input.

remat_policy=custom reads one key per tensor (named as above, as in MaxText): remat, device or offload.
Offloading needs a backend with a pinned_host memory space; trainer.build checks the devices before compiling.
"""

import jax

from MaxText.config.choices import RematPolicy as P
from MaxText.config.schema import REMAT_TENSORS as TENSORS  # pylint: disable=unused-import  # re-exported

_QKV = ("query_proj", "key_proj", "value_proj")
_MATMULS = _QKV + ("out_proj", "mlpwi", "mlpwo")

# name -> (tensors saved on the device, tensors offloaded to the host)
POLICIES = {
    P.MINIMAL: (_MATMULS, ()),
    P.SAVE_DOT_EXCEPT_MLPWI: (_QKV + ("out_proj", "mlpwo"), ()),
    P.SAVE_DOT_EXCEPT_MLP: (_QKV + ("out_proj",), ()),
    P.SAVE_DOT_WITH_CONTEXT_EXCEPT_MLP: (_QKV + ("context", "out_proj"), ()),
    P.SAVE_QKV_PROJ: (_QKV, ()),
    P.SAVE_OUT_PROJ: (("out_proj",), ()),
    P.QKV_PROJ_OFFLOADED: ((), _QKV),
    P.MINIMAL_OFFLOADED: ((), _MATMULS),
}
# Every policy name: "none" (no remat), "full" (save nothing), the table above and "custom" (per-tensor keys).
NAMES = (P.NONE, P.FULL, *POLICIES, P.CUSTOM)


def saved_and_offloaded(name: str, custom: tuple = ()) -> tuple:
    """(names kept on device, names offloaded to host) of a policy; custom takes (tensor, choice) pairs."""
    if name == "custom":
        return (
            tuple(t for t, choice in custom if choice == "device"),
            tuple(t for t, choice in custom if choice == "offload"),
        )
    if name in POLICIES:
        return POLICIES[name]
    if name == "full":
        return (), ()
    raise ValueError(
        f"remat_policy={name!r} has no checkpoint policy; expected one of {', '.join(NAMES[1:])}"
    )


def offloads(name: str, custom: tuple = ()) -> bool:
    return name != "none" and bool(saved_and_offloaded(name, custom)[1])


def checkpoint_policy(name: str, custom: tuple = ()):
    """The jax.checkpoint policy for a remat_policy name ("none" means no rematerialisation: no policy)."""
    saved, offloaded = saved_and_offloaded(name, custom)
    if offloaded:
        return jax.checkpoint_policies.save_and_offload_only_these_names(
            names_which_can_be_saved=list(saved),
            names_which_can_be_offloaded=list(offloaded),
            offload_src="device",
            offload_dst="pinned_host",
        )
    if saved:
        return jax.checkpoint_policies.save_only_these_names(*saved)
    return jax.checkpoint_policies.nothing_saveable


def host_offload_supported(devices) -> bool:
    """Whether every device has a pinned_host memory space to offload to (asked of the backend, not assumed)."""
    try:
        return all("pinned_host" in {m.kind for m in d.addressable_memories()} for d in devices)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
