"""``specforge validate``: catch the ways a draft directory loads "successfully" and then decodes badly.

Engines skip tensors they do not know and default config fields they do not find, so a broken export
usually serves with τ = 1.0 instead of failing. Each check here names one such silent failure, says
why it matters and how to fix it. :func:`check_draft` is pure (config + tensors, meta tensors allowed);
:func:`validate_directory` adds the checks that need files, the target, the model class and the decoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from specforge.eagle3.auto import AutoDraftModelConfig
from specforge.eagle3.config import ENGINE_SUPPORT, written_aux_ids
from specforge.errors import SpecforgeError
from specforge.export import spec
from specforge.export.report import FAIL, PASS, SKIP, WARN, Check, Report
from specforge.export.source import source_from_dict, target_info

_REEXPORT = "re-export with `specforge export --checkpoint <epoch dir>`"


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


# ------------------------------------------------------------------------------------------ pure checks

def _check_config(cfg: dict, flat: dict, layout: str) -> list[Check]:
    out = []
    info = spec.LAYOUT_INFO[layout]
    if info.speculators:
        ok = cfg.get("speculators_model_type") == "eagle3" and isinstance(cfg.get("transformer_layer_config"), dict)
        sc = cfg.get("speculators_config") or {}
        verifier = (sc.get("verifier") or {}).get("name_or_path")
        methods = sc.get("proposal_methods") or [{}]
        if not ok:
            out.append(Check("config", FAIL, "speculators config without speculators_model_type 'eagle3' and a "
                             "transformer_layer_config dict: vLLM will not recognise the draft", _REEXPORT))
        elif not verifier or methods[0].get("speculative_tokens") is None:
            out.append(Check("config", FAIL, "speculators_config lacks verifier.name_or_path or "
                             "proposal_methods[0].speculative_tokens: vLLM rejects the config",
                             "re-export with --target-model-path (or --verifier)"))
        else:
            out.append(Check("config", PASS, f"speculators eagle3, verifier {verifier}"))
    elif not (cfg.get("architectures") or [None])[0] in AutoDraftModelConfig._config_mapping:
        out.append(Check("config", FAIL, f"architectures is {cfg.get('architectures')}, not a registered draft "
                         f"class ({', '.join(sorted(AutoDraftModelConfig._config_mapping))}): engines would build "
                         "a different model", _REEXPORT))
    else:
        out.append(Check("config", PASS, f"architectures {cfg['architectures']}"))
    layers = flat.get("num_hidden_layers") or 1
    if layers != 1:
        support = ENGINE_SUPPORT[info.engine].multi_layer if info.engine else ""
        out.append(Check("num_hidden_layers", WARN if support else PASS, f"{layers} decoder layers"
                         + (f": {support}" if support else " (vLLM and specforge load them)"),
                         "serve it with an engine release that loads multi-layer drafts" if support else ""))
    if flat.get("tie_word_embeddings"):
        out.append(Check("tie_word_embeddings", FAIL, "tie_word_embeddings=true: SGLang replaces lm_head by the "
                         "embedding and ignores the trained head", "set tie_word_embeddings to false"))
    return out


def _check_tensors(tensors: dict, flat: dict, prefix: str) -> list[Check]:
    try:
        expected = spec.expected_tensors(flat, prefix)
    except SpecforgeError as e:
        return [Check("config fields", FAIL, str(e), _REEXPORT)]
    out = []
    missing = [k for k in expected if k not in tensors]
    if "lm_head.weight" in missing:
        out.append(Check("lm_head", FAIL, "lm_head.weight missing: SGLang silently keeps a random head "
                         "(τ = 1.0) and vLLM refuses to load", _REEXPORT))
        missing.remove("lm_head.weight")
    out.append(Check("required tensors", FAIL if missing else PASS,
                     f"missing {', '.join(missing)}: the engine leaves them random or refuses to load"
                     if missing else f"all {len(expected)} present", _REEXPORT if missing else ""))
    bad: list[tuple] = []
    transposed: list[tuple] = []
    for k, (shape, _) in expected.items():
        if k in tensors and tuple(tensors[k].shape) != shape:
            got = tuple(tensors[k].shape)
            (transposed if len(shape) == 2 and got == shape[::-1] else bad).append((k, got, shape))
    for k, got, shape in transposed:
        what = "[3*Ht, H]" if k == "fc.weight" else _fmt(got)
        out.append(Check(f"{k} layout", FAIL, f"{k} is transposed: {what} but engines expect "
                         f"{_fmt(shape)} (out_features, in_features)", f"store {k}.T ({_REEXPORT})"))
    out.append(Check("tensor shapes", FAIL if bad else PASS,
                     "; ".join(f"{k} is {_fmt(g)}, config implies {_fmt(s)}" for k, g, s in bad) if bad
                     else "all match the config", "make config.json and the weights come from the same "
                     "checkpoint" if bad else ""))
    unknown = [k for k in tensors if k not in expected and k not in spec.EMBED_KEYS]
    if any(k.startswith("model.") for k in unknown):
        out.append(Check("unknown tensors", FAIL, f"names with a 'model.' prefix ({unknown[0]}): vLLM adds its own "
                         "prefix and rejects them, SGLang maps them inconsistently", "strip the 'model.' prefix"))
    else:
        out.append(Check("unknown tensors", FAIL if unknown else PASS,
                         f"{', '.join(unknown[:4])}: engines silently ignore them (so their twins stay random)"
                         if unknown else "none", f"rename to the {prefix}* names or drop them" if unknown else ""))
    kinds = {"int64": "torch.int64", "bool": "torch.bool"}
    wrong = [f"{k} is {str(tensors[k].dtype).replace('torch.', '')}, expected {kind}"
             for k, (_, kind) in expected.items() if k in tensors and kind in kinds and str(tensors[k].dtype) != kinds[kind]]
    floats = {str(tensors[k].dtype) for k, (_, kind) in expected.items() if k in tensors and kind == "float"}
    wrong += [f"{k} is not floating point" for k, (_, kind) in expected.items()
              if k in tensors and kind == "float" and not tensors[k].is_floating_point()]
    if len(floats) > 1:
        wrong.append(f"mixed float dtypes {sorted(floats)}")
    out.append(Check("dtypes", FAIL if wrong else PASS, "; ".join(wrong) if wrong else
                     f"weights {', '.join(sorted(f.replace('torch.', '') for f in floats))}, d2t int64, t2d bool",
                     _REEXPORT if wrong else ""))
    return out


def _check_finite(tensors: dict) -> Check:
    """NaN/inf weights load fine everywhere and then decode garbage: a draft must be all finite."""
    import torch

    bad = []
    for k, v in tensors.items():
        if v.is_floating_point() and not v.is_meta:
            n = int((~torch.isfinite(v)).sum())
            if n:
                bad.append(f"{k} ({n} of {v.numel()})")
    if bad:
        return Check("finite weights", FAIL, f"NaN/inf values in {', '.join(bad[:4])}"
                     f"{', ...' if len(bad) > 4 else ''}: the draft would propose garbage",
                     "retrain from an earlier checkpoint with a lower --learning-rate")
    return Check("finite weights", PASS, "no NaN/inf")


def _check_vocab_map(tensors: dict, dims: spec.Eagle3Config) -> list[Check]:
    import torch

    d2t, t2d = tensors.get("d2t"), tensors.get("t2d")
    if d2t is None or t2d is None:
        return [Check("d2t/t2d", FAIL, "d2t or t2d missing: SGLang would draft in draft ids as if they were "
                      "target ids", _REEXPORT)]
    if d2t.dim() != 1 or d2t.numel() != dims.draft_vocab_size:
        return [Check("d2t length", FAIL, f"d2t has {d2t.numel()} entries but draft_vocab_size is "
                      f"{dims.draft_vocab_size}: vLLM refuses the checkpoint, SGLang silently maps draft tokens "
                      "to wrong target ids", "rebuild d2t from the dataset cache's vocab mapping")]
    if t2d.dim() != 1 or t2d.numel() != dims.vocab_size:
        return [Check("t2d length", FAIL, f"t2d has {t2d.numel()} entries but vocab_size is {dims.vocab_size}",
                      "rebuild t2d from the dataset cache's vocab mapping")]
    if d2t.is_meta or t2d.is_meta:
        return [Check("d2t/t2d", SKIP, "meta tensors: lengths match, values not checked")]
    targets = torch.arange(dims.draft_vocab_size, dtype=torch.int64) + d2t.to(torch.int64)
    if bool((targets < 0).any()) or bool((targets >= dims.vocab_size).any()):
        return [Check("d2t/t2d", FAIL, "d2t maps draft ids outside the target vocabulary",
                      "d2t must hold target_id - draft_id; rebuild it")]
    problems = []
    if targets.unique().numel() != targets.numel():
        problems.append("two draft ids map to the same target id")
    if int(t2d.to(torch.int64).sum()) != dims.draft_vocab_size:
        problems.append(f"t2d marks {int(t2d.sum())} target ids, expected {dims.draft_vocab_size}")
    if not bool(t2d.to(torch.bool)[targets].all()):
        problems.append("t2d is false at some id + d2t[id]")
    return [Check("d2t/t2d", FAIL if problems else PASS, "; ".join(problems) if problems else
                  f"{dims.draft_vocab_size} draft ids -> distinct target ids, t2d agrees",
                  "rebuild d2t/t2d together from one vocab mapping" if problems else "")]


def _check_norm(cfg: dict, flat: dict, layout: str) -> Check:
    info = spec.LAYOUT_INFO[layout]
    where = cfg if info.speculators else flat
    if "norm_before_residual" not in where:
        if info.engine == "vllm":
            return Check("norm_before_residual", FAIL, "norm_before_residual absent: vLLM's speculators path "
                         "then assumes true, but this draft adds the residual before hidden_norm",
                         "write \"norm_before_residual\": false in config.json")
        return Check("norm_before_residual", WARN, "absent: fine for SGLang and specforge; vLLM's speculators path "
                     "would assume true", "`specforge export` writes it explicitly (false)")
    if where["norm_before_residual"] is not False:
        return Check("norm_before_residual", FAIL, f"norm_before_residual={where['norm_before_residual']!r}: "
                     "specforge drafts are trained with norm after the residual", "set it to false")
    return Check("norm_before_residual", PASS, "false (explicit)")


def _check_aux_ids(cfg: dict, layout: str, manifest: dict | None, target) -> Check:
    name = "aux layer ids"
    sg, top = written_aux_ids(cfg)
    info = spec.LAYOUT_INFO[layout]
    plain = not info.speculators
    ours = spec.specforge_aux_ids(cfg, layout)
    if plain and top and sg and list(top) != spec.from_sglang_ids(list(sg)):
        return Check(name, FAIL, f"eagle_config ids {list(sg)} (SGLang: output of layer i) and top-level ids "
                     f"{list(top)} (vLLM: input of layer i) must differ by exactly one; one engine would read "
                     "layers off by one", f"write eagle_config ids {[i - 1 for i in top]} (or re-export)")
    if manifest is not None and "aux_layer_ids" in manifest and (manifest["aux_layer_ids"] or None) != ours:
        want = manifest["aux_layer_ids"]
        if plain:
            found, exp = f"eagle_config ids {sg}", None if want is None else spec.to_sglang_ids(want)
            how = "SGLang's eagle_config means output of layer i: the trained input-of-layer ids minus one"
        else:
            found, exp, how = f"top-level ids {top}", want, "vLLM's field means input of layer i"
        return Check(name, FAIL, f"{found} but the draft was trained on hidden_states {want}; {how}. The engine "
                     "would feed hidden states off by one layer", f"write {exp} (omit the ids for defaults)")
    if target is not None and ours:
        L = target.num_hidden_layers
        if any(not 1 <= i <= L - 1 for i in ours):
            return Check(name, FAIL, f"ids select hidden_states {ours}, out of range 1..{L - 1} for the "
                         f"{L}-layer target", "was the draft trained for another target?")
    if ours is None:
        return Check(name, PASS, "defaults (omitted: same meaning in every engine)")
    if plain and sg and not top:
        msg = (f"eagle_config ids {list(sg)} only: right for SGLang, but vLLM falls back to them as inputs "
               "of layers (off by one)")
        fix = f"add top-level eagle_aux_hidden_state_layer_ids {ours} (specforge export does)"
        return Check(name, FAIL if info.engine == "vllm" else WARN, msg, fix)
    if plain and top and not sg:
        return Check(name, FAIL if info.engine == "sglang" else WARN, f"top-level ids {list(top)} only: SGLang reads "
                     "eagle_config and would capture its default layers", f"add eagle_config ids {[i - 1 for i in top]}")
    return Check(name, PASS, f"hidden_states {ours}, written in each engine's convention")


def _check_target(dims: spec.Eagle3Config, flat: dict, target) -> list[Check]:
    out = []
    probs = []
    if dims.vocab_size != target.vocab_size:
        probs.append(f"vocab_size {dims.vocab_size} != target's {target.vocab_size}")
    if dims.target_hidden_size != target.hidden_size:
        probs.append(f"fc expects target hidden {dims.target_hidden_size}, target has {target.hidden_size}")
    elif dims.hidden_size != target.hidden_size:
        probs.append(f"hidden_size {dims.hidden_size} != target's {target.hidden_size}, but the engines give the "
                     "draft the target's embedding")
    out.append(Check("matches target", FAIL if probs else PASS, "; ".join(probs) if probs else
                     f"vocab {target.vocab_size}, hidden {target.hidden_size}",
                     "export the draft trained for this target" if probs else ""))
    mp = flat.get("max_position_embeddings")
    if target.max_position_embeddings and mp and mp < target.max_position_embeddings:
        out.append(Check("max_position_embeddings", WARN, f"{mp} < target's {target.max_position_embeddings}: "
                         "engines cap the context at the smaller value", "raise it in config.json if intended"))
    return out


def check_draft(config: dict, tensors: dict, layout: str = "eagle3", manifest: dict | None = None,
                target=None) -> list[Check]:
    """Structural checks of a draft: config + ``{name: tensor}`` (meta tensors allowed).

    ``layout`` is one of :data:`spec.LAYOUTS`; ``target`` a :class:`TargetInfo` or None.
    """
    flat = spec.flatten_config(config, layout)
    out = _check_config(config, flat, layout)
    try:
        dims = spec.draft_dims(flat)
    except SpecforgeError as e:
        return out + [Check("config fields", FAIL, str(e), _REEXPORT)]
    out.append(Check("config fields", PASS, f"H={dims.hidden_size} heads={dims.num_attention_heads}/{dims.num_key_value_heads} "
                     f"hd={dims.head_dim} I={dims.intermediate_size} V={dims.vocab_size} "
                     f"Vd={dims.draft_vocab_size} Ht={dims.target_hidden_size}"))
    prefix = spec.layer_prefix(layout)
    if spec.LAYOUT_INFO[layout].loose_names and not any(k.startswith("midlayer.") for k in tensors) \
            and any(k.startswith("layers.0.") for k in tensors):
        prefix = "layers.0."
    out += _check_tensors(tensors, flat, prefix)
    out.append(_check_finite(tensors))
    out += _check_vocab_map(tensors, dims)
    out.append(_check_norm(config, flat, layout))
    out.append(_check_aux_ids(config, layout, manifest, target))
    if target is not None:
        out += _check_target(dims, flat, target)
    return out


# ------------------------------------------------------------------------------------ directory checks

def _check_embedding(tensors: dict, target_model) -> Check:
    import torch

    key = next((k for k in spec.EMBED_KEYS if k in tensors), None)
    if key is None:
        return Check("embedding", PASS, "not exported: engines share the target's embedding")
    if target_model is None:
        return Check("embedding", FAIL, f"{key} present and no target to compare with: vLLM would use it "
                     "instead of the target's (a random one ruins every draft)",
                     "pass --target-model-path to verify it, or re-export (exports never include it)")
    ref = target_model.get_input_embeddings().weight.detach().to("cpu", torch.float32)
    got = tensors[key].to(torch.float32)
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-2, atol=1e-3):
        return Check("embedding", FAIL, f"{key} differs from the target's embedding: vLLM would embed draft "
                     "inputs with it (random embed_tokens => τ ≈ 1)", "drop it: " + _REEXPORT)
    return Check("embedding", PASS, f"{key} equals the target's")


def _check_loads(source) -> Check:
    from specforge.export.roundtrip import build_model

    try:
        build_model(source)
    except SpecforgeError as e:
        return Check("loads in specforge", FAIL, str(e), _REEXPORT)
    except ImportError as e:
        return Check("loads in specforge", SKIP, f"skipped: draft model class unavailable ({e})")
    return Check("loads in specforge", PASS, f"strict load into {source.config.get('architectures', [spec.ARCH])[0]}")


def validate_directory(directory: str | os.PathLike, target_model_path: str | None = None,
                       layout: str = "auto", decode: bool = True, device: str = "cpu", target=None,
                       decode_options: dict[str, Any] | None = None) -> Report:
    """Run every check on a draft directory.

    ``target_model_path`` enables the target checks, the embedding comparison and (with ``decode``) the
    τ > 1 greedy decode; ``target`` (a :class:`TargetInfo`) gives the config checks without loading weights.
    """
    d = Path(directory)
    if not d.is_dir():
        raise SpecforgeError(f"{d}: not a directory; pass an exported or trained draft directory.")
    cfg = spec.read_json(d / "config.json")
    spec.check_is_draft(d, cfg)
    if layout in ("auto", None):
        layout = spec.detect_layout(d, cfg)
    if layout not in spec.LAYOUTS:
        raise SpecforgeError(f"--layout {layout}: use auto or one of {', '.join(spec.LAYOUTS)}.")
    man = spec.read_json(d / spec.MANIFEST) if (d / spec.MANIFEST).is_file() else None
    report = Report(str(d), layout)
    try:
        tensors = spec.read_tensors(d)
    except SpecforgeError as e:
        report.checks.append(Check("weights", FAIL, str(e), _REEXPORT))
        return report
    if target is None and target_model_path:
        target = target_info(target_model_path)
    report.checks += check_draft(cfg, tensors, layout, man, target)
    target_model = None
    if target_model_path and (decode or any(k in tensors for k in spec.EMBED_KEYS)):
        from specforge.modeling.loading import load_target_model

        target_model = load_target_model(target_model_path, dtype="float32", device=device)
    report.checks.append(_check_embedding(tensors, target_model))
    if not report.ok:
        report.checks.append(Check("loads in specforge", SKIP, "skipped: fix the failures above first"))
        if decode:
            report.checks.append(Check("greedy decode τ", SKIP, "skipped: fix the failures above first"))
        return report
    source = source_from_dict(cfg, tensors, layout, str(d))
    report.checks.append(_check_loads(source))
    if decode:
        from specforge.export.tau import check_tau

        report.checks.append(check_tau(source, target_model, target_model_path, device, **(decode_options or {})))
    return report
