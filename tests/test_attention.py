"""The attention modules and how they plug into the students."""
import re

import numpy as np
import paddle
import pytest

from models.attention import ATTENTIONS, CBAM, ECA, SE, CoordAttention, SimAM, eca_kernel_size
from models.student import build_student
from utils.deploy.checkpoint import load_student, save_checkpoint
from utils.deploy.spec import ModelSpec


def _trainable(layer) -> int:
    return sum(int(np.prod(p.shape)) for p in layer.parameters() if not p.stop_gradient)


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_module_keeps_shape_and_passes_gradients(name):
    module = ATTENTIONS[name](24)
    x = paddle.randn([2, 24, 6, 5])
    x.stop_gradient = False
    y = module(x)
    assert y.shape == x.shape
    (y * paddle.randn(y.shape)).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_simam_has_no_parameters():
    assert len(SimAM(64).parameters()) == 0


@pytest.mark.parametrize("channels, k", [(16, 3), (64, 3), (96, 3), (256, 5), (1024, 5), (4096, 7)])
def test_eca_kernel_size_follows_the_formula(channels, k):
    assert eca_kernel_size(channels) == k
    assert ECA(channels).conv.weight.shape == [1, 1, k]


def test_parameter_counts_match_hand_computation():
    c = 64
    assert _trainable(ECA(c)) == 3                                   # one k=3 kernel, no bias
    hidden = c // 16
    assert _trainable(SE(c)) == c * hidden + hidden + hidden * c + c  # two 1x1 convs with bias
    assert _trainable(CBAM(c)) == (c * hidden + hidden + hidden * c + c) + (2 * 7 * 7 + 1)
    mip = max(8, c // 32)
    assert _trainable(CoordAttention(c)) == (c * mip + mip) + 2 * mip + 2 * (mip * c + c)


def test_gated_modules_start_close_to_identity():
    x = paddle.randn([2, 32, 4, 4])
    for module in (SE(32), CBAM(32), CoordAttention(32)):
        module.eval()
        ratio = (module(x) / x).numpy()
        assert ratio.min() > 0.85 and ratio.max() <= 1.0


@pytest.mark.parametrize("student", ["mobilenet_v2", "mobilenet_v3_small"])
@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_student_with_attention_trains_one_step(student, attention):
    model = build_student(student, 3, attention=attention, attention_blocks="2")
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    optimizer = paddle.optimizer.AdamW(learning_rate=0.01, parameters=model.parameters())
    model.train()
    loss = paddle.nn.functional.cross_entropy(model(paddle.randn([4, 3, 32, 32])), paddle.to_tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert np.isfinite(float(loss))
    changed = {k for k, v in model.state_dict().items() if not np.array_equal(before[k], v.numpy())}
    attention_keys = {k for k in before if re.match(r"features\.\d+\.1\.", k) or ".mid_se." in k}
    if attention != "simam":  # SimAM has no parameters to train
        assert attention_keys & changed


def test_placement_v2_wraps_the_last_blocks_and_v3_replaces_se():
    v2 = build_student("mobilenet_v2", 3, attention="eca", attention_blocks="3")
    wrapped = [i for i, block in enumerate(v2.features) if isinstance(block, paddle.nn.Sequential)
               and isinstance(block[-1], ECA)]
    assert wrapped == [15, 16, 17]
    v3 = build_student("mobilenet_v3_small", 3, attention="cbam")
    se_blocks = [b for b in v3.blocks if b.use_se]
    assert se_blocks and all(isinstance(b.mid_se, CBAM) for b in se_blocks)
    kept = build_student("mobilenet_v3_small", 3, attention="se")
    assert all(type(b.mid_se).__name__ == "SqueezeExcitation" for b in kept.blocks if b.use_se)


def test_pretrained_layers_keep_their_weights_when_attention_is_added(tmp_path):
    imagenet_like = build_student("mobilenet_v2", 1000)
    path = tmp_path / "mobilenet_v2_imagenet.pdparams"
    paddle.save(imagenet_like.state_dict(), str(path))
    model = build_student("mobilenet_v2", 5, weights=str(path), attention="coord")
    np.testing.assert_array_equal(model.features[3][0].conv[0][0].weight.numpy(),
                                  imagenet_like.features[3].conv[0][0].weight.numpy())
    assert model.classifier[1].weight.shape == [1280, 5]


def test_checkpoint_with_attention_round_trips(tmp_path):
    model = build_student("mobilenet_v3_small", 4, attention="eca")
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    spec = ModelSpec(tuple("abcd"), "mobilenet_v3_small", 1.0, "eca", "all", 32, "random_resized",
                     (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    save_checkpoint(tmp_path, model.state_dict(), spec, {"fold": 0})
    loaded, loaded_spec, meta = load_student(tmp_path / "best.pdparams")
    assert loaded_spec == spec and meta["fold"] == 0
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
