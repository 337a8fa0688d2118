"""Mixtral checkpoints (transformers' MixtralForCausalLM names) <-> ptmkit LlamaDecoder with a SparseMoE in every block.

Mixtral (Jiang et al. 2024, "Mixtral of Experts" §2.1) is LLaMA's decoder whose every feed-forward block is a sparse
layer of E SwiGLU experts: a token goes to its top-k experts (k = 2), gated by softmax probabilities renormalised over
the chosen k, with no capacity limit. In ptmkit that is LlamaConfig(moe=MoEConfig(every=1, top_k=k, renormalised
gates, capacity factors >= E / k so nothing is dropped)); a model built from a Mixtral checkpoint reports family
"llama". Attention, norms, embeddings and heads keep the LLaMA adapter's names; only the feed-forward differs.

Expert weights of one layer (F = expert intermediate size; checkpoint names relative to model.layers.{i}.):
  ptmkit ffn.router.weight (E, H)                           <-> block_sparse_moe.gate.weight (E, H)
  ptmkit ffn.w_in (E, H, 2F), columns gate_0, up_0, gate_1, ...  <-> block_sparse_moe.experts.{e}.w1.weight (F, H) gate
                                                                   block_sparse_moe.experts.{e}.w3.weight (F, H) up
  ptmkit ffn.w_out (E, F, H)                                <-> block_sparse_moe.experts.{e}.w2.weight (H, F) down
This per-expert layout is what transformers' save_pretrained writes (5.x fuses the experts in memory, as
mlp.experts.gate_up_proj (E, 2F, H) = [gate; up] rows and mlp.experts.down_proj (E, H, F), and converts back when it
saves), what 4.x and the released Mixtral checkpoints use, and what export writes; import reads either layout.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import CheckpointError, Reader
from ptmkit.models.convert.llama import LlamaAdapter
from ptmkit.models.llama import LlamaConfig
from ptmkit.nn.moe import MoEConfig

log = logging.getLogger(__name__)

# MixtralConfig's defaults (transformers 5.x configuration_mixtral.py): a config.json may leave out values equal to
# them, and several differ from LlamaConfig's (rms_norm_eps 1e-5, rope theta 1e6, 8 key/value heads).
_HF_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu", "max_position_embeddings": 4096 * 32,
    "initializer_range": 0.02, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
    "tie_word_embeddings": False, "attention_dropout": 0.0, "sliding_window": None, "rope_theta": 1e6,
    "num_local_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0,
}
# MoEConfig settings with no exact Mixtral key. config.json keeps them under "ptmkit_moe" (transformers ignores unknown
# config keys), so a ptmkit round trip restores the training setup exactly; a plain Mixtral checkpoint gets the values
# that train as transformers does: dropless capacity, no z-loss, Mixtral's load-balancing weight (see _aux_coef).
PTMKIT_MOE = ("capacity_factor", "eval_capacity_factor", "aux_loss_coef", "z_loss_coef", "routing_groups")
_MOE = "block_sparse_moe."  # per-expert modules (saved layout)
_FUSED = "mlp."  # transformers 5.x in-memory layout (what MixtralForCausalLM.state_dict() holds)


def _aux_coef(coef: float, num_layers: int, top_k: int) -> float:
    """Convert a load-balancing weight from Mixtral's loss to ptmkit's.

    transformers pools the router statistics of all L layers into one loss whose expert shares sum to k (so k x
    ptmkit's per-layer aux_loss at equal routing); ptmkit adds aux_loss_coef x aux_loss for every layer. The same pull
    on the routers therefore needs aux_loss_coef = router_aux_loss_coef x k / L (equal at balanced routing; pooling
    across layers makes the two losses differ slightly elsewhere).
    """
    return coef * top_k / num_layers


def _stack(tensors: list[torch.Tensor | None], what: str) -> torch.Tensor | None:
    """Per-expert tensors -> one (E, ...) tensor; None when any is missing (the Reader has listed it)."""
    if any(t is None for t in tensors):
        return None
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise CheckpointError(f"mixtral: the experts' {what} tensors differ in shape ({sorted(shapes)}); every expert "
                              "of a layer must have the same size")
    return torch.stack(tensors)


@dataclass
class MixtralAdapter(LlamaAdapter):
    model_type: str = "mixtral"
    shape_keys: tuple = ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'num_local_experts')
    architectures: dict = field(default_factory=lambda: {
        "MixtralModel": "base",
        "MixtralForCausalLM": "causal-lm",
        "MixtralForSequenceClassification": "sequence-classification",
        "MixtralForTokenClassification": "token-classification",
    })

    # ---- config ------------------------------------------------------------------------------------------------------

    def config_from_hf(self, hf: dict) -> LlamaConfig:
        hf = {**_HF_DEFAULTS, **hf}
        window = hf["sliding_window"]
        if window is not None and window < hf["max_position_embeddings"]:
            raise CheckpointError(
                f"mixtral: sliding_window {window} lets each token attend to the previous {window} tokens only, and "
                "ptmkit's LLaMA attends to the whole context; inputs up to "
                f"{window} tokens compute the same either way, so for those set sliding_window to null in config.json"
            )
        e, k, layers = hf["num_local_experts"], hf["num_experts_per_tok"], hf["num_hidden_layers"]
        if k < 2:
            raise CheckpointError(
                f"mixtral: num_experts_per_tok {k} gives every token a gate of 1.0 (Mixtral renormalises over the "
                "chosen experts), and ptmkit's top-1 routing gates by the raw router probability (Switch); "
                "this checkpoint has no ptmkit form"
            )
        extra = dict(hf.get("ptmkit_moe") or {})
        unknown = sorted(set(extra) - set(PTMKIT_MOE))
        if unknown:
            raise CheckpointError(f"mixtral: config.json ptmkit_moe has unknown key(s) {unknown}; valid keys are "
                                  f"{list(PTMKIT_MOE)}")
        moe = dict(num_experts=e, top_k=k, every=1, capacity_factor=e / k, eval_capacity_factor=e / k,
                   router_jitter=hf["router_jitter_noise"], z_loss_coef=0.0,
                   aux_loss_coef=_aux_coef(hf["router_aux_loss_coef"], layers, k))
        moe.update(extra)
        return dataclasses.replace(super().config_from_hf(hf), moe=MoEConfig(**moe))

    def check_export(self, cfg: LlamaConfig) -> None:
        """Raise CheckpointError when transformers' Mixtral cannot compute what this model computes."""
        moe, problems = cfg.moe, []
        if moe.every != 1:
            dense = [i for i in range(cfg.num_layers) if not moe.sparse_layer(i)]
            problems.append(f"moe.every {moe.every} leaves layers {dense} dense, and every Mixtral layer is sparse "
                            "(fix: moe.every: 1)")
        if moe.top_k == 1:
            problems.append("moe.top_k 1 gates each token by its raw router probability (Switch), and Mixtral "
                            "renormalises the gates over the chosen experts, which makes a top-1 gate 1.0 "
                            "(fix: moe.top_k >= 2)")
        elif not moe.renormalise:
            problems.append("moe.normalize_gates false gates by the raw router probabilities, and Mixtral renormalises "
                            "them over the top-k (fix: moe.normalize_gates: null)")
        if cfg.attention_bias or cfg.mlp_bias:
            problems.append("attention_bias/mlp_bias: Mixtral's attention and experts have no biases "
                            "(fix: attention_bias: false, mlp_bias: false)")
        if problems:
            raise CheckpointError(
                "this LLaMA + Mixture-of-Experts model has no Mixtral checkpoint form (transformers' only sparse "
                "LLaMA):\n  - " + "\n  - ".join(problems) + "\n  these settings change what the model computes, so "
                "apply the fixes and train again; until then keep it as a training checkpoint "
                "(runs/NAME/checkpoints/step-N), which ptmkit resumes and evaluates"
            )

    def config_to_hf(self, cfg: LlamaConfig) -> dict:
        self.check_export(cfg)
        moe = cfg.moe
        out = super().config_to_hf(cfg)
        for key in ("attention_bias", "mlp_bias", "pretraining_tp"):  # LLaMA-only keys
            del out[key]
        out.update(
            model_type="mixtral",
            intermediate_size=moe.intermediate_size or cfg.intermediate_size,  # each expert's F: no dense layers
            num_local_experts=moe.num_experts,
            num_experts_per_tok=moe.top_k,
            router_aux_loss_coef=moe.aux_loss_coef * cfg.num_layers / moe.top_k,  # inverse of _aux_coef
            router_jitter_noise=moe.router_jitter,
            output_router_logits=False,
            sliding_window=None,
            ptmkit_moe={name: getattr(moe, name) for name in PTMKIT_MOE},
        )
        _warn_differences(moe)
        return out

    # ---- the sparse feed-forward of one layer ------------------------------------------------------------------------

    def ffn_from_hf(self, r: Reader, hf: str, cfg: LlamaConfig) -> dict[str, torch.Tensor | None]:
        e = cfg.moe.num_experts
        if r.has(f"{hf}{_FUSED}experts.gate_up_proj") or r.has(f"{hf}{_FUSED}gate.weight"):
            router = r.take(f"{hf}{_FUSED}gate.weight")
            gate_up, down = r.take(f"{hf}{_FUSED}experts.gate_up_proj"), r.take(f"{hf}{_FUSED}experts.down_proj")
            gate = up = None
            if gate_up is not None:
                gate, up = gate_up.chunk(2, dim=1)  # (E, F, H) each: rows [gate; up]
        else:
            router = r.take(f"{hf}{_MOE}gate.weight")
            taken = {w: [r.take(f"{hf}{_MOE}experts.{j}.{w}.weight") for j in range(e)] for w in ("w1", "w3", "w2")}
            gate, up, down = (_stack(taken[w], w) for w in ("w1", "w3", "w2"))  # (E, F, H), (E, F, H), (E, H, F)
        sd: dict[str, torch.Tensor | None] = {"router.weight": router}
        if gate is not None and up is not None:
            # (E, F, 2, H) -> (E, 2F, H) rows gate_0, up_0, gate_1, ... -> (E, H, 2F): SparseMoE's interleaved columns
            sd["w_in"] = torch.stack([gate, up], dim=2).flatten(1, 2).transpose(1, 2)
        if down is not None:
            sd["w_out"] = down.transpose(1, 2)  # (E, H, F) -> (E, F, H)
        return sd

    def ffn_to_hf(self, ffn: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
        rows = ffn["w_in"].transpose(1, 2)  # (E, 2F, H): rows alternate gate_f, up_f
        gate, up = rows[:, 0::2], rows[:, 1::2]  # (E, F, H) each
        down = ffn["w_out"].transpose(1, 2)  # (E, H, F)
        out = {f"{_MOE}gate.weight": ffn["router.weight"]}
        for j in range(cfg.moe.num_experts):
            out.update({f"{_MOE}experts.{j}.w1.weight": gate[j], f"{_MOE}experts.{j}.w3.weight": up[j],
                        f"{_MOE}experts.{j}.w2.weight": down[j]})
        return out


def _warn_differences(moe: MoEConfig) -> None:
    """Log what transformers' Mixtral will do differently from this ptmkit model (not errors: see check_export)."""
    dropless = moe.num_experts / moe.top_k  # capacity factor at which an expert has a slot for every token
    if moe.eval_capacity_factor < dropless:
        log.warning(
            "mixtral export: moe.eval_capacity_factor %s < num_experts / top_k = %s, so this ptmkit model drops tokens "
            "at evaluation when an expert is over capacity, and transformers' Mixtral never drops tokens: outputs "
            "differ wherever ptmkit drops one (set eval_capacity_factor >= %s for identical outputs)",
            moe.eval_capacity_factor, dropless, dropless,
        )
    training = []
    if moe.capacity_factor < dropless:
        training.append(f"capacity_factor {moe.capacity_factor} drops tokens over capacity in training, and "
                        "transformers never drops tokens")
    if moe.z_loss_coef > 0:
        training.append(f"the router z-loss (z_loss_coef {moe.z_loss_coef}), which transformers does not have")
    if moe.router_jitter > 0:
        training.append("router_jitter, which transformers applies to the experts' inputs too, ptmkit to the "
                        "router's only")
    if training:
        log.warning("mixtral export: fine-tuning in transformers will differ from ptmkit training: %s (inference is "
                    "unaffected; ptmkit restores these settings from config.json)", "; ".join(training))
