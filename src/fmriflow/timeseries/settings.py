"""What ``input.mode: timeseries`` needs from the rest of the config (relations the schema cannot express)."""

from __future__ import annotations

from typing import Any, Mapping


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """One line per problem, naming the keys (``config`` with its defaults filled in)."""
    section = config["input"]
    if section["mode"] != "timeseries":
        return []
    ts, problems = section["timeseries"], []
    for key in ("dir", "atlas"):
        if not ts[key]:
            problems.append(f"input.timeseries.{key}: null, but input.mode: timeseries needs it "
                            + ("(the folder of region time series)" if key == "dir" else
                               "(the atlas's name, as the files name it: atlas-<name>, seg-<name> or rois_<name>)"))
    given = [k for k in ("coordinates", "labels_image") if ts[k]]
    if len(given) != 1:
        problems.append("input.timeseries.coordinates and input.timeseries.labels_image: input.mode: timeseries needs "
                        f"exactly one (a table of region names and MNI x, y, z, or a label image); got {len(given)}")
    if ts["labels_table"] and not ts["labels_image"]:
        problems.append("input.timeseries.labels_table names the labels of input.timeseries.labels_image, which is null")
    if config["voxel"]["enabled"]:
        problems.append("voxel.enabled: true needs 4-D BOLD, which input.mode: timeseries has not; set voxel.enabled: "
                        "false, or input.mode: bids")
    return problems
