"""Published weights one call away: ``eca_jax.create_model(name, pretrained=True | "tag" | path)``.

    import eca_jax
    model = eca_jax.create_model("ecaresnet50d", pretrained=True)      # a bound flax Module
    logits = model(x_nhwc, train=False)
    module, variables = model.unbind()                                 # for jax.jit / training

    from eca_jax import pretrained
    loaded = pretrained.load("resnet50.tv2_in1k")                      # module, variables, input settings
    loaded.model_cfg.test_input_size, loaded.signature.input_settings, loaded.entry.licence

Command lines and training take the spec ``pretrained://NAME[.TAG]`` wherever a checkpoint path goes
(``python -m eca_jax.predict x.jpg --checkpoint pretrained://ecaresnet50d``,
``--config.init_from=pretrained://resnet50.tv2_in1k``). ``python -m eca_jax.models --pretrained`` lists
every published weight, cached or not.

The first call finds the file (hub: ``huggingface_hub``, honouring ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE``; plain URL: ``torch.hub.download_url_to_file``; the release's cloud-drive files:
a message saying which file to download from where and where to put it), checks its size and SHA-256,
converts it once (architecture and k from its shapes; --verify's logits check when torch is there) and
caches the result atomically under ``$ECA_JAX_CACHE`` (default ``~/.cache/eca_jax``). Later calls read
the cache and make no request.

Modules, one job each: :mod:`.manifest` (the data: every published file, its source, licence, hash,
top-1, input settings), :mod:`.cache` (paths, quarantine), :mod:`.download` (fetch + check),
:mod:`.convert` (file -> converted cache dir), :mod:`.api` (:func:`load`, specs), :mod:`.listing`
(the table), :mod:`.errors`.

Layer 5: imports ``checkpoints`` (4) and ``models`` (3); ``nnx``, ``train``, ``convert``, ``evaluate``,
``predict`` sit above and may use it.
"""
from eca_jax.pretrained.api import SPEC_PREFIX, Pretrained, is_spec, load, load_spec, model_cfg_for
from eca_jax.pretrained.errors import IntegrityError, NotCachedError, PretrainedError
from eca_jax.pretrained.manifest import DEFAULT, ENTRIES, Manifest, Weights

__all__ = ["load", "load_spec", "is_spec", "SPEC_PREFIX", "Pretrained", "model_cfg_for", "Manifest", "Weights",
           "ENTRIES", "DEFAULT", "PretrainedError", "NotCachedError", "IntegrityError"]
