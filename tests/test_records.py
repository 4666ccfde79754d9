"""stepmap.records: the dataclass subset the run path uses, built without exec (see its
docstring for why), behaves as dataclasses do where stepmap relies on it."""

import pickle

import pytest

from stepmap import records
from stepmap.records import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list = field(default_factory=list)


@dataclass
class Checked:
    value: int
    seen: list = field(default_factory=list, compare=False)

    def __post_init__(self):
        if self.value < 0:
            raise ValueError("negative")
        self.seen.append(self.value)


@dataclass(order=True)
class Timed:
    at: float
    name: str = field(compare=False, default="")


@dataclass
class Outer:
    point: Point
    points: list = field(default_factory=list)
    by_name: dict = field(default_factory=dict)


def test_positional_keyword_default_and_factory_arguments():
    a, b = Point(1), Point(x=2, y=3)
    assert (a.x, a.y, a.tags, b.x, b.y) == (1, 0, [], 2, 3)
    assert a.tags is not Point(1).tags  # a fresh list per instance
    assert [f.name for f in fields(Point)] == ["x", "y", "tags"] == [f.name for f in fields(a)]
    assert Point.y == 0 and not hasattr(Point, "tags")  # defaults stay class attributes


@pytest.mark.parametrize("call, message", [
    (lambda: Point(), "missing 1 required argument: 'x'"),
    (lambda: Point(1, 2, [], 4), "takes 3 positional arguments but 4 were given"),
    (lambda: Point(1, x=2), "got multiple values for argument 'x'"),
    (lambda: Point(1, z=2), "got an unexpected keyword argument 'z'")])
def test_wrong_arguments_are_type_errors(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_frozen_equality_hash_and_repr():
    a = Point(1, 2)
    with pytest.raises(AttributeError, match="cannot assign to field 'x'"):
        a.x = 5
    with pytest.raises(AttributeError):
        del a.y
    assert a == Point(1, 2) and a != Point(1, 3) and a != (1, 2, [])
    assert repr(a) == "Point(x=1, y=2, tags=[])"
    assert hash(Point(1, 2, ())) == hash(Point(1, 2, ()))
    with pytest.raises(TypeError):
        hash(Checked(1))  # mutable and compared by value: unhashable, as a dataclass


def test_post_init_runs_and_replace_runs_it_again():
    c = Checked(3)
    assert c.seen == [3] and c == Checked(3, seen=["anything"])  # seen is not compared
    with pytest.raises(ValueError):
        Checked(-1)
    d = replace(c, value=4)
    assert d.value == 4 and d.seen == [3, 4] and c.value == 3
    with pytest.raises(TypeError, match="no field 'nope'"):
        replace(c, nope=1)


def test_order_compares_only_the_compared_fields():
    assert Timed(1.0, "b") < Timed(2.0, "a") and sorted([Timed(2), Timed(1)])[0].at == 1
    assert Timed(1.0, "x") == Timed(1.0, "y") and Timed(1.0) <= Timed(1.0)
    with pytest.raises(TypeError):
        Timed(1.0) < Point(1)


def test_asdict_converts_nested_records_and_containers():
    outer = Outer(Point(1), [Point(2, 3)], {"p": Point(4)})
    assert asdict(outer) == {"point": {"x": 1, "y": 0, "tags": []},
                             "points": [{"x": 2, "y": 3, "tags": []}],
                             "by_name": {"p": {"x": 4, "y": 0, "tags": []}}}
    with pytest.raises(TypeError):
        asdict({"not": "a record"})


def test_records_pickle_round_trip_frozen_ones_included():
    for value in (Point(1, 2, [3]), Checked(5), Outer(Point(1))):
        assert pickle.loads(pickle.dumps(value)) == value


def test_a_field_without_default_after_one_with_default_is_refused():
    with pytest.raises(TypeError, match="non-default argument 'b' follows default"):
        @dataclass
        class Bad:
            a: int = 0
            b: int

    with pytest.raises(ValueError):
        records.field(default=1, default_factory=list)


def test_methods_the_class_body_defines_are_kept():
    @dataclass(frozen=True)
    class Named:
        name: str

        def __repr__(self):
            return f"<{self.name}>"

        def __hash__(self):
            return 7

    assert repr(Named("x")) == "<x>" and hash(Named("x")) == 7 and Named("x") == Named("x")
