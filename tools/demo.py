"""``make demo``: GreenMIM pre-training on generated data, end to end, on the CPU.

1. generates the demo data set in ``data/demo`` if missing (``greenmim_mm.datasets.demo_data``);
2. pre-trains ``configs/pretrain/greenmim_swin-nano_demo_128px.py`` into ``work_dirs/demo``
   (checkpoints, ``vis_data/scalars.json``), resuming if an earlier run left checkpoints there;
3. writes ``work_dirs/demo/reconstruction.png`` (original / masked input / reconstruction);
4. prints the loss at the start and the end of training.
"""
import argparse
import glob
import json
import os
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')


def read_losses(work_dir):
    """(iteration, loss) pairs logged by the newest run in ``work_dir`` and its predecessors."""
    losses = {}
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if 'loss' in row:
                    losses[row['iter']] = row['loss']
    return sorted(losses.items())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='GreenMIM demo: generate data, pre-train, visualise')
    p.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo'),
                   help='demo data set (generated here if missing)')
    p.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'demo'))
    p.add_argument('--max-epochs', type=int, default=None,
                   help='shorten the run (smoke tests); the schedule keeps its shape')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from greenmim_mm.apis import launch, visualization  # after parsing: --help without the stack
    from greenmim_mm.datasets import demo_data
    data, work = args.data_root, args.work_dir
    if not osp.isfile(osp.join(data, 'meta', 'params.json')):
        demo_data.generate(data)
    options = [f'train_dataloader.dataset.data_root={data}/']
    if args.max_epochs:
        options.append(f'train_cfg.max_epochs={args.max_epochs}')
    train_args = [CONFIG, '--work-dir', work, '--cfg-options'] + options
    if osp.isfile(osp.join(work, 'last_checkpoint')):
        train_args.insert(1, '--resume')  # finish (or just reuse) an earlier demo run
    launch.main_train(train_args)
    with open(osp.join(work, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    picture = osp.join(work, 'reconstruction.png')
    visualization.main([CONFIG, checkpoint, '--out', picture, '--data-root', data])
    losses = read_losses(work)
    if losses:
        (i0, l0), (i1, l1) = losses[0], losses[-1]
        print(f'\nGreenMIM demo: loss {l0:.4f} at iteration {i0} -> {l1:.4f} at iteration {i1}')
    print(f'checkpoints and logs: {work}\nreconstructions: {picture}')
    return losses


if __name__ == '__main__':
    os.chdir(REPO)
    main()
