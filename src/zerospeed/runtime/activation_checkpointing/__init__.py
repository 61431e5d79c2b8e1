"""DeepSpeed's `deepspeed.runtime.activation_checkpointing` path; `checkpointing` is `zerospeed.checkpointing`."""


def __getattr__(name: str):
    from zerospeed.runtime.unsupported import submodule_attribute

    return submodule_attribute("zerospeed.runtime.activation_checkpointing", name)
