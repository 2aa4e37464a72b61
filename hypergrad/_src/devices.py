"""Splitting one hypergradient's work over the devices of a mesh axis.

Shared by forward mode's ``tangent`` axis and the population's ``member``
axis: both check the mesh the user gave, and place arrays on it for a
``jax.shard_map``, whatever the axis type of the mesh (JAX's default
``Auto`` or ``Explicit``).
"""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


def check_mesh_axis(mesh, axis: str, arg: str) -> None:
  """Raises unless ``mesh`` is None or a ``Mesh`` with an axis ``axis``.

  Args:
    mesh: the value given.
    axis: the axis name given.
    arg: the argument that named the axis, for the message.
  """
  if mesh is None:
    return
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f'mesh must be a jax.sharding.Mesh or None, got '
                    f'{type(mesh).__name__}.')
  if axis not in mesh.axis_names:
    raise ValueError(f'{arg}={axis!r} is not an axis of the mesh, whose '
                     f'axes are {mesh.axis_names}.')


def place(tree: PyTree, mesh: jax.sharding.Mesh, *spec) -> PyTree:
  """``tree`` laid out as ``PartitionSpec(*spec)`` on ``mesh`` (inside jit).

  Explicit mesh axes take ``jax.reshard``; Auto ones a sharding constraint.
  """
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      *spec))
  explicit = any(
      t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
  if explicit:
    return jax.reshard(tree, sharding)
  return jax.lax.with_sharding_constraint(tree, sharding)


def split_map(fn, xs: PyTree, mesh: jax.sharding.Mesh, axis: str,
              out_specs: Any = None) -> PyTree:
  """``fn`` on every device's share of ``xs``, split over ``axis`` of ``mesh``.

  The one placement of both splits: ``xs`` (leading axis a multiple of the
  axis size) is laid out over ``axis``, each device runs ``fn`` on its block
  (``jax.shard_map``; other mesh axes are left to the caller), and the
  outputs leave laid out on ``mesh`` as ``out_specs`` says.

  Args:
    fn: ``fn(block) -> out``, traceable.
    xs: the pytree to split along its leading axes.
    mesh: a ``jax.sharding.Mesh`` with an axis ``axis``.
    axis: the mesh axis to split over.
    out_specs: pytree prefix of ``PartitionSpec`` for the outputs; None:
      every output split over ``axis``.

  Returns:
    ``fn``'s outputs, gathered per ``out_specs``.
  """
  split = jax.sharding.PartitionSpec(axis)
  out = jax.shard_map(fn, mesh=mesh, in_specs=(split,),
                      out_specs=split if out_specs is None else out_specs,
                      axis_names={axis}, check_vma=False)(
                          place(xs, mesh, axis))
  return place(out, mesh)
