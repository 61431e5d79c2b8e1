"""Memory tiers for ZeRO partitions: in memory (device or CPU) and NVMe swap files.

Offload moves a partition between tiers; it does not know about ZeRO stages. See
`tier.py` for the interface the optimizer uses, `nvme.py` (masters and optimizer states)
and `nvme_params.py` (stage-3 parameter shards) for the NVMe tier, `swap_dir.py` for
where swap files live and how they are cleaned up.
"""

from zerospeed.zero.offload.tier import (
    NVMeSettings, ResidentParamTier, ResidentTier, build_optimizer_tier, build_param_tier,
)

__all__ = ["NVMeSettings", "ResidentParamTier", "ResidentTier", "build_optimizer_tier", "build_param_tier"]
