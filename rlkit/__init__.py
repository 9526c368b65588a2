"""rlkit: train language models with reinforcement learning, one YAML file at a time.

A plugin needs only `hookimpl` from here:

    import rlkit

    @rlkit.hookimpl
    def rlkit_rewards():
        return {"short": short}
"""
import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rlkit")
