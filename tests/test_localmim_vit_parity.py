"""LocalMIM ViT parity details (issue 20 item 10): the x4 head's channel LayerNorm has the official
eps 1e-6 (was 1e-5: head-0 predictions off by 2e-5 relative); ``LocalMIMMAEViT(x, mask=True)``
(MAEViT's call style) is the intended ValueError (was AttributeError); the default forward is
dense, unlike MAEViT's.

References: the official x4 rescale written out here (LocalMIM's official ViT decoder:
ConvTranspose2d, channel LayerNorm eps 1e-6, GELU, ConvTranspose2d) with the decoder's weights;
mmpretrain's VisionTransformer for the dense forward.
"""
import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models.backbones import VisionTransformer

import greenmim_mm  # noqa: F401
from greenmim_mm.models.backbones import LocalMIMMAEViT
from greenmim_mm.models.necks import LocalMIMViTDecoder
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_localmim_vit import ARCH


def official_x4(rescale, x, eps=1e-6):
    """LocalMIM's official x4 upsampling on (B, D, h, w) with the given modules' weights."""
    up1, norm, _, up2 = rescale
    y = F.conv_transpose2d(x, up1.weight, up1.bias, stride=2)
    y = F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2], norm.weight, norm.bias, eps)
    return F.conv_transpose2d(F.gelu(y.permute(0, 3, 1, 2)), up2.weight, up2.bias, stride=2)


def test_x4_head_layernorm_has_the_official_eps():
    torch.manual_seed(0)
    dec = LocalMIMViTDecoder(in_channels=32, pred_dims=27, scale=4, embed_dims=16, num_heads=2)
    with torch.no_grad():
        for p in dec.rescale.parameters():
            p.mul_(0.01)  # small activations: the eps matters
        x = torch.randn(2, 16, 4, 4)
        ours = dec.rescale(x)
        ref = official_x4(dec.rescale, x)
        old = official_x4(dec.rescale, x, eps=1e-5)
    assert (ours - ref).abs().max().item() <= 1e-6 * ref.abs().max().item()
    assert (old - ref).abs().max().item() > 1e-3 * ref.abs().max().item()  # eps matters here


@pytest.mark.parametrize('mask', [True, False, 1])
def test_maevit_style_mask_argument_is_a_value_error(mask):
    vit = LocalMIMMAEViT(arch=ARCH, img_size=64, patch_size=16)
    with pytest.raises(ValueError, match=r'mask must be a \(2, 16\) bool tensor .*does not draw '
                       r'masks'):
        vit(torch.randn(2, 3, 64, 64), mask=mask)


def test_default_forward_is_dense():
    """forward(x) is mmpretrain's dense ViT path (MAEViT's forward(x) would mask at random)."""
    torch.manual_seed(0)
    ours = LocalMIMMAEViT(arch=ARCH, img_size=64, patch_size=16, out_indices=[1, 3])
    ref = VisionTransformer(arch=ARCH, img_size=64, patch_size=16, out_indices=[1, 3],
                            out_type='raw')
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = ours(x), ref(x)
    assert [tuple(t.shape) for t in out] == [(2, 17, 32)] * 2
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
