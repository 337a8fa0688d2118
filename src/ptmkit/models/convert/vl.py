"""Model directories of the vision-language encoders (models/visualbert.py, models/lxmert.py). transformers'
VisualBERT and LXMERT read detector region features (visual_embeds, visual_feats + boxes), not pixels, so these
directories keep ptmkit's own tensor names under model_types of their own ("ptmkit-visualbert", "ptmkit-lxmert"):
ptmkit saves and loads them through the same engine as every family (shape checks, head tables); transformers
refuses them by their model_type rather than loading something else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ptmkit.models.convert.base import Adapter, Reader


@dataclass
class VLAdapter(Adapter):
    config_cls: type = None
    backbone_cls: type = None
    arch_stem: str = ""

    def __post_init__(self) -> None:
        from ptmkit.models.vl_heads import VLPreTraining

        tiny = dict(vocab_size=8, hidden_size=8, num_heads=1, intermediate_size=8, image_size=4, patch_size=2,
                    num_visual_classes=2)
        # Names do not depend on sizes, so a tiny model on the CPU gives them in a millisecond. Not the meta device:
        # this runs when the registry is imported, and initialising meta tensors imports torch._dynamo (1.5-2 s
        # added to every process start, `ptm --help` included).
        with torch.random.fork_rng(devices=[]):  # importing ptmkit.models leaves the caller's random stream as it was
            model = VLPreTraining(self.backbone_cls(self.config_cls(**tiny)))
        head = [n for n in model.state_dict() if not n.startswith("backbone.")]
        self.heads = {"vl-pretraining": {n: n for n in head}}
        self.head_key_prefixes = tuple(sorted({n.split(".")[0] + "." for n in head} | {"codebook"}))
        self.architectures = {f"{self.arch_stem}Model": "base", f"{self.arch_stem}ForPreTraining": "vl-pretraining"}

    def config_from_hf(self, hf: dict):
        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        return self.config_cls(**{k: v for k, v in hf.items() if k in fields})

    def config_to_hf(self, cfg) -> dict:
        return {**dataclasses.asdict(cfg), "model_type": self.model_type}

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        with torch.device("meta"):
            names = list(self.backbone_cls(cfg).state_dict())
        sd = {n: r.take(n) for n in names}
        return {k: v for k, v in sd.items() if v is not None}

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        return dict(sd)


def visualbert_adapter() -> VLAdapter:
    from ptmkit.models.visualbert import VisualBertConfig, VisualBertEncoder

    return VLAdapter(model_type="ptmkit-visualbert", prefix="visualbert.", architectures={}, heads={},
                     config_cls=VisualBertConfig, backbone_cls=VisualBertEncoder, arch_stem="PtmkitVisualBert",
                     shape_keys=("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                                 "max_position_embeddings", "image_size", "patch_size", "num_visual_classes"))


def lxmert_adapter() -> VLAdapter:
    from ptmkit.models.lxmert import LxmertConfig, LxmertEncoder

    return VLAdapter(model_type="ptmkit-lxmert", prefix="lxmert.", architectures={}, heads={},
                     config_cls=LxmertConfig, backbone_cls=LxmertEncoder, arch_stem="PtmkitLxmert",
                     shape_keys=("vocab_size", "hidden_size", "num_text_layers", "num_image_layers",
                                 "num_cross_layers", "num_heads", "intermediate_size", "max_position_embeddings",
                                 "image_size", "patch_size", "num_visual_classes"))
