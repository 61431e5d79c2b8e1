"""ZeRO stage 3: parameters partitioned over ranks, gathered per module unit when used."""

from zerospeed.zero.stage3.params import ParamUnit, ZeroParamStatus
from zerospeed.zero.stage3.state_dict import gather_full_state_dict

__all__ = ["ParamUnit", "ZeroParamStatus", "gather_full_state_dict"]
