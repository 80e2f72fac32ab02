"""Run under torchrun (gloo, CPU): DDP-averaged GreenMIM gradients vs a single-process computation.

Every rank builds the same tiny fp64 GreenMIM, takes its own batch (seeded by rank) and draws its
own mask (seeded by rank); DDP averages the gradients. Rank 0 then recomputes, in one process,
the gradients of every rank's (batch, mask) pair with an identical model and averages them.
Writes a JSON summary to argv[1].
"""
import copy
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import greenmim_mm  # noqa: F401
from greenmim_mm.models.algorithms.greenmim import draw_unit_mask
from greenmim_mm.registry import MODELS

SEED, IMG, BATCH = 123, 64, 2


def build_model():
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='GreenMIM', mask_ratio=0.5, mask_seed=SEED,
        backbone=dict(type='GreenSwinTransformer', img_size=IMG, window_size=2,
                      arch=dict(embed_dims=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]),
                      drop_path_rate=0.0, out_indices=(3, ), attn_backend='sdpa'),
        neck=dict(type='MAEUnitDecoder', in_channels=64, embed_dims=16, depth=1, num_heads=2),
        head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True)))
    model.init_weights()
    return model.double()


def batch_of(rank):
    return torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(100 + rank),
                       dtype=torch.float64)


def main(out_path):
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    reference = copy.deepcopy(model)
    ddp = DDP(model)
    loss = ddp(batch_of(rank), None, mode='loss')['loss']
    loss.backward()
    masks = [None] * world
    dist.all_gather_object(masks, draw_unit_mask((2, 2), 0.5, SEED, rank, 0).tolist())
    if rank == 0:
        grads = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
        for r in range(world):
            reference.zero_grad()
            mask = draw_unit_mask((2, 2), 0.5, SEED, r, 0)
            img = batch_of(r)
            reference.head.loss(reference.forward_masked(img, mask), img, mask).backward()
            for n, p in reference.named_parameters():
                grads[n] += p.grad / world
        ddp_grads = dict(model.named_parameters())
        worst = max((ddp_grads[n].grad - g).abs().max().item() for n, g in grads.items())
        scale = max(g.abs().max().item() for g in grads.values())
        with open(out_path, 'w') as f:
            json.dump(dict(world=world, masks=masks, worst=worst, scale=scale), f)
    dist.barrier()  # rank 1 waits for rank 0's reference


if __name__ == '__main__':
    main(sys.argv[1])
    # gloo's teardown (destroy_process_group, or the one at interpreter exit) can hang a rank
    # whose peer already left; the result is written, so leave without tearing down.
    sys.stdout.flush()
    os._exit(0)

