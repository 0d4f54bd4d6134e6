"""The complexity report counts what the literature publishes for the plain networks."""
import pytest

from models.student import build_student
from models.teacher import build_teacher
from utils.reporting import complexity


@pytest.mark.parametrize("name, params_m", [
    ("mobilenet_v2", 3.50), ("mobilenet_v3_large", 5.48), ("mobilenet_v3_small", 2.54),
])
def test_students_match_published_parameter_counts(name, params_m):
    assert round(complexity.count_parameters(build_student(name, 1000)) / 1e6, 2) == params_m


def test_teacher_matches_published_counts():
    teacher, _ = build_teacher(1000, "none")
    assert round(complexity.count_parameters(teacher) / 1e6, 2) == 25.56
    assert round(complexity.count_flops(teacher, 224) / 1e9, 1) == 4.1


def test_mobilenet_v2_flops_and_the_cost_of_attention():
    plain = complexity.count_flops(build_student("mobilenet_v2", 1000), 224)
    assert round(plain / 1e6) == 301  # published: 300M multiply-adds
    with_cbam = build_student("mobilenet_v2", 1000, attention="cbam")
    assert complexity.count_flops(with_cbam, 224) > plain
    assert complexity.count_parameters(with_cbam) > complexity.count_parameters(build_student("mobilenet_v2", 1000))


def test_cli_prints_json(capsys):
    assert complexity.main(["--student", "mobilenet_v3_small", "--attention", "eca", "--img_size", "64",
                            "--num_classes", "10", "--no_speed", "--json"]) == 0
    assert '"attention": "eca"' in capsys.readouterr().out
    assert complexity.main(["--student", "nope", "--no_speed"]) == 2
    assert "unknown student 'nope'" in capsys.readouterr().err
