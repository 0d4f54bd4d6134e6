"""Building the teacher and students from the three kinds of weights, and freezing."""
import numpy as np
import paddle
import paddle.vision.models.resnet as paddle_resnet
import pytest

from models.freeze import set_train_mode
from models.student import build_student, feature_stages
from models.teacher import build_teacher
from utils.runtime.errors import ConfigError


def test_teacher_from_a_local_file_keeps_a_matching_head_and_replaces_an_imagenet_one(tmp_path):
    trained, head_trained = build_teacher(3, "none")
    assert not head_trained
    own = tmp_path / "teacher3.pdparams"
    paddle.save(trained.state_dict(), str(own))
    loaded, head_trained = build_teacher(3, str(own))
    assert head_trained
    np.testing.assert_array_equal(loaded.fc.weight.numpy(), trained.fc.weight.numpy())

    imagenet = tmp_path / "resnet50_imagenet.pdparams"
    paddle.save(build_teacher(1000, "none")[0].state_dict(), str(imagenet))
    replaced, head_trained = build_teacher(3, str(imagenet))
    assert not head_trained and replaced.fc.weight.shape == [2048, 3]


def test_imagenet_download_failure_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(paddle_resnet, "get_weights_path_from_url", offline)
    with pytest.raises(ConfigError, match="--teacher_weights PATH.*--teacher_weights none"):
        build_teacher(3, "imagenet")


def test_a_file_that_is_not_weights_is_refused(tmp_path):
    junk = tmp_path / "junk.pdparams"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="not a weights file this tool can read"):
        build_student("mobilenet_v2", 3, str(junk))


@pytest.mark.parametrize("student", ["mobilenet_v2", "mobilenet_v3_small"])
def test_frozen_student_blocks_keep_weights_and_batchnorm_statistics(student):
    model = build_student(student, 3, freeze_blocks=3)
    frozen = feature_stages(model)[:3]
    before = [{k: v.numpy().copy() for k, v in stage.state_dict().items()} for stage in frozen]
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.AdamW(learning_rate=0.05, parameters=trainable)
    set_train_mode(model)
    assert not frozen[0].training and feature_stages(model)[3].training
    loss = paddle.nn.functional.cross_entropy(model(paddle.randn([4, 3, 32, 32])), paddle.to_tensor([0, 1, 2, 1]))
    loss.backward()
    optimizer.step()
    for stage, saved in zip(frozen, before):
        for name, value in stage.state_dict().items():
            np.testing.assert_array_equal(saved[name], value.numpy(), err_msg=name)


def test_freezing_more_blocks_than_exist_is_refused():
    with pytest.raises(ConfigError, match="has 19 feature blocks"):
        build_student("mobilenet_v2", 3, freeze_blocks=30)
