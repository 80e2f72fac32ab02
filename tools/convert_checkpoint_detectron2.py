#!/usr/bin/env python
"""Write a converted greenmim_mm backbone in detectron2's checkpoint layout.

    GREENMIM_MM_EXTRAS=detectron2 tools/env.sh python tools/convert_checkpoint_detectron2.py \
        backbone_converted.pth backbone_d2.pth [--prefix backbone.bottom_up.body.]

The input is what ``tools/convert_checkpoint.py`` writes (``{'state_dict': {'backbone.*'}}``); the
output, ``{'model': {'backbone.bottom_up.body.*'}, '__author__': 'greenmim_mm'}``, loads with a
plain ``DetectionCheckpointer`` (e.g. as ``train.init_checkpoint`` of detectron2's
``tools/lazyconfig_train_net.py``) into a model with ``GreenSwinBackbone`` or
``GreenTwinsBackbone`` under an FPN.
``greenmim_mm.detectron2.GreenDetectionCheckpointer`` loads both files and checks every weight.
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('input', help='converted backbone (tools/convert_checkpoint.py)')
    parser.add_argument('output', help='detectron2-layout checkpoint to write')
    parser.add_argument('--prefix', default='backbone.bottom_up.body.',
                        help="where the model keeps the backbone's weights "
                        '(default: backbone.bottom_up.body., GreenSwinBackbone or '
                        'GreenTwinsBackbone under an FPN)')
    args = parser.parse_args(argv)
    from greenmim_mm.checkpoint.loading import CheckpointLoadError
    from greenmim_mm.detectron2 import export_detectron2_backbone
    try:
        count = export_detectron2_backbone(args.input, args.output, args.prefix)
    except (CheckpointLoadError, FileNotFoundError, OSError) as err:
        raise SystemExit(f'convert_checkpoint_detectron2: error: {err}')
    print(f'saved {args.output} ({count} tensors under {args.prefix})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
