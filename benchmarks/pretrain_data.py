"""Pre-training throughput: step time with and without data loading, and the data pipeline against
transformers' DataCollatorForLanguageModeling on the same sequences.

Data loading = sampler order → gather packed sequences from the memory-mapped shards → MLM corruption.
Target: data loading < 5% of a training step. Rounds alternate and medians are reported.

    .venv/bin/python benchmarks/pretrain_data.py --shards runs/demo/data/gutenberg --tokenizer runs/demo/tokenizer
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ptmkit.data.batches import PretrainBatches
from ptmkit.data.sampler import PackedDataset
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import from_preset
from ptmkit.objectives import MaskedLM, MLMConfig
from ptmkit.train.optim import OptimConfig, build_optimizer
from ptmkit.train.precision import Precision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="token shards directory (ptm data prepare)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory the shards were made with")
    p.add_argument("--preset", default="bert-mini", help="model size from ptmkit.models.PRESETS")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="autocast mode of the step")
    p.add_argument("--rounds", type=int, default=8, help="timed repetitions (medians reported)")
    args = p.parse_args()

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

    for _ in range(2):  # warm-up
        step(next(batches))
    data_t, hf_t, step_t = [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        batch = next(batches)
        data_t.append(time.perf_counter() - t0)
        # reference: the same packed sequences, masked by transformers' collator (examples as lists of ids)
        ids = batch["input_ids"]
        examples = [{"input_ids": row} for row in dataset.get_batch(batches.sampler.epoch_indices(0)[:args.batch_size])["input_ids"].tolist()]
        t0 = time.perf_counter()
        hf_collator(examples)
        hf_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        step(batch)
        step_t.append(time.perf_counter() - t0)
        del ids
    d, h, s = statistics.median(data_t), statistics.median(hf_t), statistics.median(step_t)
    tokens = args.batch_size * args.seq_len
    print(f"data loading {d * 1e3:.2f} ms/batch, training step without data {s * 1e3:.0f} ms "
          f"-> data is {100 * d / (d + s):.2f}% of a step; with data {tokens / (d + s):.0f} tokens/s, "
          f"without {tokens / s:.0f} tokens/s")
    print(f"MLM collation: ptmkit {d * 1e3:.2f} ms vs transformers DataCollatorForLanguageModeling {h * 1e3:.2f} ms")
    print(json.dumps({"benchmark": "pretrain_data", "ours": round(tokens / d), "reference": round(tokens / h),
                      "ratio": round(h / d, 2), "unit": "tokens/s (data pipeline)",
                      "data_fraction_of_step": round(d / (d + s), 4), "step_ms": round(s * 1e3, 1),
                      "tokens_per_s_with_data": round(tokens / (d + s)), "tokens_per_s_without_data": round(tokens / s)}))


if __name__ == "__main__":
    main()
