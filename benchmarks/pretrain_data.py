"""Pre-training throughput: step time with and without data loading, and the data pipeline against
transformers' DataCollatorForLanguageModeling on the same sequences.

Data loading = sampler order → gather packed sequences from the memory-mapped shards → MLM corruption.
Target: data loading < 5% of a training step. In each round ptmkit's batch and transformers' collation take turns
to go first (then the step runs); min / median / max are printed and medians used for the figures.

    .venv/bin/python benchmarks/pretrain_data.py --shards runs/demo/data/gutenberg --tokenizer runs/demo/tokenizer
    .venv/bin/python benchmarks/pretrain_data.py --shards S --tokenizer T --preset bert-tiny --batch-size 2 \
        --seq-len 32 --rounds 1          # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Summary, round_order  # noqa: E402

from ptmkit.cli.options import add_precision_option  # noqa: E402
from ptmkit.data.batches import PretrainBatches  # noqa: E402
from ptmkit.data.sampler import PackedDataset  # noqa: E402
from ptmkit.data.shards import TokenShards  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.models import from_preset  # noqa: E402
from ptmkit.objectives import MaskedLM, MLMConfig  # noqa: E402
from ptmkit.train.optim import OptimConfig, build_optimizer  # noqa: E402
from ptmkit.train.precision import Precision  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="token shards directory (ptm data prepare)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory the shards were made with")
    p.add_argument("--preset", default="bert-mini", help="model size from ptmkit.models.PRESETS")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    add_precision_option(p, what="autocast mode of the step", choices=("auto", "fp32", "bf16"))
    p.add_argument("--rounds", type=int, default=8, help="timed repetitions (min / median / max printed, medians used)")
    args = p.parse_args(argv)

    tok = Tokenizer.load(args.tokenizer)
    shards = TokenShards(args.shards, tok)
    objective = MaskedLM(MLMConfig(mask_token_id=tok.mask_id, vocab_size=tok.vocab_size,
                                   special_token_ids=tok.all_special_ids))
    dataset = PackedDataset(shards, args.seq_len, "no_cross", pad_id=tok.pad_id)
    batches = PretrainBatches(dataset, args.batch_size, objective, seed=0)
    model = from_preset(args.preset, task="masked-lm",
                        config={"vocab_size": tok.vocab_size, "max_position_embeddings": args.seq_len})
    opt = build_optimizer(model, OptimConfig())
    prec = Precision(args.precision, torch.device("cpu"))

    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend, pad_token="[PAD]", mask_token="[MASK]",
                                     cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
    hf_collator = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, return_tensors="pt")

    def step(batch):
        with prec.autocast():
            loss, _ = objective.loss(model, batch)
        prec.backward(loss)
        prec.step(opt, model.parameters(), 1.0)

    # reference input: packed sequences of the same size, as lists of ids (what the collator takes), built untimed
    examples = [{"input_ids": row} for row in
                dataset.get_batch(batches.sampler.epoch_indices(0)[:args.batch_size])["input_ids"].tolist()]
    for _ in range(2):  # warm-up
        step(next(batches))
        hf_collator(examples)
    data_t, hf_t, step_t = [], [], []
    got = {}

    def ours():
        t0 = time.perf_counter()
        got["batch"] = next(batches)
        data_t.append(time.perf_counter() - t0)

    def reference():  # the same packed sequences' size, masked by transformers' collator
        t0 = time.perf_counter()
        hf_collator(examples)
        hf_t.append(time.perf_counter() - t0)

    for r in range(args.rounds):
        for fn in round_order([ours, reference], r):  # who goes first alternates
            fn()
        t0 = time.perf_counter()
        step(got.pop("batch"))
        step_t.append(time.perf_counter() - t0)
    ds, hs, ss = Summary(data_t), Summary(hf_t), Summary(step_t)
    d, h, s = ds.median, hs.median, ss.median
    tokens = args.batch_size * args.seq_len
    print(f"data loading {d * 1e3:.2f} ms/batch, training step without data {s * 1e3:.0f} ms "
          f"-> data is {100 * d / (d + s):.2f}% of a step; with data {tokens / (d + s):.0f} tokens/s, "
          f"without {tokens / s:.0f} tokens/s")
    print(f"MLM collation: ptmkit {d * 1e3:.2f} ms vs transformers DataCollatorForLanguageModeling {h * 1e3:.2f} ms")
    print(f"min / median / max: ptmkit data {ds.format()}; transformers collator {hs.format()}; step {ss.format()}")
    result = {"benchmark": "pretrain_data", "ours": round(tokens / d), "reference": round(tokens / h),
              "ratio": round(h / d, 2), "unit": "tokens/s (data pipeline)",
              "data_fraction_of_step": round(d / (d + s), 4), "step_ms": round(s * 1e3, 1),
              "tokens_per_s_with_data": round(tokens / (d + s)), "tokens_per_s_without_data": round(tokens / s),
              "ms_min_median_max": {"ours": ds.as_dict(), "reference": hs.as_dict(), "step": ss.as_dict()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
