"""An Optuna search as the command line writes it: which keys are searched, over what (Hydra's
sweep syntax, `interval()`, `range()`, `choice()`, read as Optuna's distributions), and which are
fixed. The Optuna sweeper searches it; a sweep directory compares a relaunch's with its first's."""

from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException

from gptlab.cli import setting_error
from gptlab.faults import SettingError

if TYPE_CHECKING:  # imported when a search is read: Hydra imports the sweeper in every entry point
    import optuna


def distribution(override: Override) -> "optuna.distributions.BaseDistribution | None":
    """The Optuna distribution an override's sweep stands for; None for a plain value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        # both ends included, as hydra-optuna-sweeper took them (Python's range leaves the stop out)
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise SettingError("use interval(), range() or choice()")


def search_space(overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The keys to search, each with its distribution, and the keys fixed for every trial, each
    with its value as the command line writes it. A later override of a key replaces an earlier."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        try:
            searched = distribution(override)
        except (ValueError, HydraException) as err:  # Optuna's checks too: a log scale from 0, ...
            reason = " ".join(str(err).split())
            raise setting_error(
                f"{override.input_line} is not a search space Optuna takes: {reason}"
            ) from None
        if searched is not None:
            space[key] = searched
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    """Every value of each key, for Optuna's GridSampler: only discrete spaces have them."""
    from optuna.distributions import CategoricalDistribution

    values = {}
    for key, searched in space.items():
        if isinstance(searched, CategoricalDistribution):
            values[key] = list(searched.choices)
        elif getattr(searched, "step", None) is not None:
            count = round((searched.high - searched.low) / searched.step) + 1
            values[key] = [searched.low + i * searched.step for i in range(count)]
        else:
            raise setting_error(f"{key}: the grid sampler needs choice() or range(), not an interval")
    return values
