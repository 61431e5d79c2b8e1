"""DeepSpeed's `deepspeed.runtime.fp16` path: the loss scalers (`loss_scaler`)."""


def __getattr__(name: str):
    from zerospeed.runtime.unsupported import submodule_attribute

    return submodule_attribute("zerospeed.runtime.fp16", name)
