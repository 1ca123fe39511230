"""Motion patterns and vectorised rendering of SynthActions (the generator itself is `synthetic.py`).

Everything here is a pure function of numpy arrays and a `numpy.random.Generator`: poses are float
arrays over frames, frames are float32 [T, H, W, 3] in [0, 1] until they are quantised for the encoder.
Pixel (x, y) covers [x, x+1) x [y, y+1); shapes are tested at pixel centres (x + 0.5, y + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The action classes, in the order presets take them (a preset with C classes uses the first C).
MOTIONS: tuple[str, ...] = ("translate", "jump", "spin", "wave", "approach", "zigzag", "circle", "recede")


@dataclass(frozen=True)
class Trajectory:
    """Pose of one shape over frames; every field is float [T]."""

    cx: np.ndarray  # centre x, pixels
    cy: np.ndarray  # centre y, pixels
    scale: np.ndarray  # multiplies the shape's size
    angle: np.ndarray  # rotation of the shape's long axis, radians

    def take(self, frames: slice) -> Trajectory:
        """The poses of a range of frames."""
        return Trajectory(self.cx[frames], self.cy[frames], self.scale[frames], self.angle[frames])


@dataclass(frozen=True)
class Appearance:
    """How one actor looks: a superellipse with a striped body and a differently coloured head end."""

    half_length: float  # semi-axis along the body, pixels at scale 1
    half_width: float  # semi-axis across the body, pixels at scale 1
    exponent: float  # superellipse exponent: 2 = ellipse, larger = boxier
    body_rgb: np.ndarray  # [3] in [0, 1], saturated
    head_rgb: np.ndarray  # [3] in [0, 1], the end at +half_length (shows orientation)
    stripe_period: float  # pixels along the body at scale 1

    @property
    def radius(self) -> float:
        """Bound on the distance of any shape pixel from the centre, at scale 1."""
        return float(np.hypot(self.half_length, self.half_width))


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) to RGB [3]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def random_appearance(rng: np.random.Generator, short_side: int, size: tuple[float, float]) -> Appearance:
    """Draw an actor's look; `size` is the (min, max) body length as a fraction of the frame's short side."""
    half_length = 0.5 * short_side * rng.uniform(*size)
    hue = rng.uniform()
    return Appearance(
        half_length=half_length,
        half_width=half_length * rng.uniform(0.5, 0.75),
        exponent=rng.uniform(2.0, 4.0),
        body_rgb=_hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)),
        head_rgb=_hsv_to_rgb((hue + rng.uniform(0.3, 0.7)) % 1.0, rng.uniform(0.75, 1.0), 1.0),
        stripe_period=half_length * rng.uniform(0.4, 0.7),
    )


# ---------------------------------------------------------------------------------------------------
# Props: the object an action comes with (a rider's horse, a diver's board). Class c's prop has shape
# PROP_SHAPES[c] and a hue near c / len(MOTIONS); it is held at the actor's tail end and follows its pose
# (it turns with a spin, grows with an approach), so the pair still performs the class's motion. A prop
# is scenery, as a horse is in UCF-101-24: it is never part of the actor's box or mask.
# ---------------------------------------------------------------------------------------------------

PROP_SHAPES: tuple[str, ...] = ("bar", "ring", "triangle", "cross", "square", "diamond", "crescent", "disc")


@dataclass(frozen=True)
class Prop:
    """The object an actor of one class carries."""

    shape: str  # one of PROP_SHAPES
    radius: float  # pixels at scale 1
    rgb: np.ndarray  # [3] in [0, 1]
    gap: float  # distance between the actor's tail end and the prop's centre, pixels at scale 1 (> radius:
    #             a strip of background separates them)


def random_prop(rng: np.random.Generator, label: int, look: Appearance) -> Prop:
    """Class `label`'s prop for an actor that looks like `look`: the shape is the class's, the size,
    hue (within the class's band), saturation and brightness vary per actor."""
    hue = (label / len(MOTIONS) + rng.uniform(-0.03, 0.03)) % 1.0
    radius = look.half_length * rng.uniform(0.8, 1.0)
    return Prop(shape=PROP_SHAPES[label % len(PROP_SHAPES)], radius=radius,
                rgb=_hsv_to_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)),
                gap=radius * rng.uniform(1.3, 1.6))


def _prop_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points (x, y), in units of the prop's radius around its centre, are inside the shape."""
    r = np.hypot(x, y)
    if shape == "disc":
        return r <= 1.0
    if shape == "bar":
        return (np.abs(x) <= 0.35) & (np.abs(y) <= 1.0)
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if shape == "triangle":
        return (y <= 0.6) & (y >= 1.6 * np.abs(x) - 1.0)
    if shape == "cross":
        return ((np.abs(x) <= 0.3) | (np.abs(y) <= 0.3)) & (np.abs(x) <= 1.0) & (np.abs(y) <= 1.0)
    if shape == "square":
        return (np.abs(x) <= 0.75) & (np.abs(y) <= 0.75)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "crescent":
        return (r <= 1.0) & (np.hypot(x - 0.5, y) > 0.75)
    raise ValueError(f"unknown prop shape {shape!r}; known: {PROP_SHAPES}")


def paint_prop(frames: np.ndarray, traj: Trajectory, look: Appearance, prop: Prop,
               present: np.ndarray) -> None:
    """Paint `prop` at the tail end of the actor moving along `traj` (in place, where `present`)."""
    along, across = _local_coords(traj, frames.shape[1], frames.shape[2])
    centre = -(look.half_length + prop.gap)
    mask = _prop_mask(prop.shape, (along - centre) / prop.radius, across / prop.radius)
    mask &= present[:, None, None]
    np.copyto(frames, prop.rgb.astype(np.float32), where=mask[..., None])


def burst_progress(rng: np.random.Generator, length: int, share: tuple[float, float],
                   factor: float) -> np.ndarray:
    """Progress u in [0, 1] (float [length]) over an action with one burst of fast motion: inside a
    window of `share` of the frames (drawn at random) u advances `factor` times as fast as outside."""
    width = max(2, int(round(rng.uniform(*share) * length)))
    start = int(rng.integers(0, max(length - width, 0) + 1))
    rate = np.ones(length)
    rate[start : start + width] = factor
    u = np.concatenate([[0.0], np.cumsum(rate[1:])])
    return u / max(u[-1], 1e-9)


# ---------------------------------------------------------------------------------------------------
# Motion patterns: each maps progress u in [0, 1] (float [T]) to offsets (dx, dy, scale, dangle) [T]
# relative to the pose at u = 0, in pixels for a frame whose short side is `side`.
# ---------------------------------------------------------------------------------------------------


def _sign(rng: np.random.Generator) -> float:
    return float(rng.choice([-1.0, 1.0]))


def _triangle(x: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1 in [-1, 1], 0 at x = 0."""
    return (2.0 / np.pi) * np.arcsin(np.sin(2.0 * np.pi * x))


def motion_offsets(
    name: str, u: np.ndarray, side: float, speed: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Offsets of one action instance of class `name`; `speed` scales distance, turns and cycles.

    Returns:
        dx, dy (pixels), scale (multiplier), dangle (radians), each float [T]; all 0 (scale 1) at u = 0.
    """
    zero, one = np.zeros_like(u), np.ones_like(u)
    if name == "translate":  # straight drift, mostly horizontal
        tilt, dist = rng.uniform(-0.35, 0.35), _sign(rng) * 0.45 * side * speed
        return dist * u * np.cos(tilt), dist * u * np.sin(tilt), one, zero
    if name == "jump":  # 1-3 vertical hops in place
        hops, height = rng.integers(1, 4), 0.22 * side * speed
        return zero, -height * np.abs(np.sin(np.pi * hops * u)), one, zero
    if name == "spin":  # continuous rotation about the centre
        turns = rng.uniform(0.75, 1.5) * speed
        return zero, zero, one, _sign(rng) * 2.0 * np.pi * turns * u
    if name == "wave":  # side-to-side oscillation in place
        cycles = rng.uniform(1.5, 3.0) * speed
        return 0.14 * side * np.sin(2.0 * np.pi * cycles * u), zero, one, zero
    if name == "approach":  # grows, as if coming closer
        return zero, zero, 1.0 + 0.7 * min(speed, 1.5) * u, zero
    if name == "zigzag":  # horizontal drift with a vertical triangle wave
        cycles, dist = rng.uniform(1.5, 2.5), _sign(rng) * 0.4 * side * speed
        return dist * u, 0.12 * side * _triangle(cycles * u), one, zero
    if name == "circle":  # a circular path, orientation fixed
        turns, radius, phase = rng.uniform(0.75, 1.25) * speed, 0.14 * side, rng.uniform(0, 2 * np.pi)
        theta = _sign(rng) * 2.0 * np.pi * turns * u + phase
        return radius * (np.cos(theta) - np.cos(phase)), radius * (np.sin(theta) - np.sin(phase)), one, zero
    if name == "recede":  # shrinks, as if moving away
        return zero, zero, 1.0 - 0.45 * min(speed, 1.4) * u, zero
    raise ValueError(f"unknown motion {name!r}; known: {MOTIONS}")


def place(
    offsets: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    angle0: float,
    radius: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> Trajectory:
    """Choose a start position so that the whole path stays inside the frame, shrinking it if needed.

    Args:
        offsets: (dx, dy, scale, dangle) from `motion_offsets`, float [T] each.
        angle0: the shape's angle at the start, radians.
        radius: the shape's bounding radius at scale 1, pixels.
    """
    dx, dy, scale, dangle = offsets
    r = radius * scale
    for _ in range(10):
        lo_x, hi_x = np.max(r - dx), np.min(width - r - dx)
        lo_y, hi_y = np.max(r - dy), np.min(height - r - dy)
        if lo_x <= hi_x and lo_y <= hi_y:
            break
        dx, dy = 0.75 * dx, 0.75 * dy  # the path does not fit: make it shorter
    # a shape too large for the frame is centred (it is then clipped, never lost: its centre stays inside)
    cx0 = rng.uniform(lo_x, hi_x) if lo_x <= hi_x else width / 2 - float(np.mean(dx))
    cy0 = rng.uniform(lo_y, hi_y) if lo_y <= hi_y else height / 2 - float(np.mean(dy))
    return Trajectory(cx0 + dx, cy0 + dy, np.asarray(scale, dtype=np.float64), angle0 + dangle)


def static_pose(traj: Trajectory, frame: int, length: int) -> Trajectory:
    """`length` frames holding the pose of `traj` at `frame` (an idle actor)."""
    idx = np.full(length, frame)
    return Trajectory(traj.cx[idx], traj.cy[idx], traj.scale[idx], traj.angle[idx])


def concat(parts: list[Trajectory]) -> Trajectory:
    """Join trajectories of consecutive frame ranges."""
    fields = ("cx", "cy", "scale", "angle")
    return Trajectory(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def plan_segments(
    rng: np.random.Generator, num_frames: int, instances: tuple[int, int],
    instance_frames: tuple[int, int], min_gap: int,
) -> list[tuple[int, int]]:
    """Action instances of a long video as [start, end) frame ranges, >= `min_gap` idle frames around each.

    Draws the number of instances and their lengths (inclusive ranges), dropping instances that do not
    fit; needs num_frames >= instance_frames[1] + 2 * min_gap.
    """
    k = int(rng.integers(instances[0], instances[1] + 1))
    while True:
        lengths = rng.integers(instance_frames[0], instance_frames[1] + 1, size=k)  # [k]
        spare = num_frames - int(lengths.sum()) - (k + 1) * min_gap
        if spare >= 0 or k == 1:
            break
        k -= 1  # too many for this video: drop one
    if spare < 0:
        raise ValueError(f"{num_frames} frames cannot hold an instance of {instance_frames} and two gaps")
    gaps = min_gap + np.floor(rng.dirichlet(np.ones(k + 1)) * spare).astype(np.int64)  # [k + 1]
    gaps[-1] += num_frames - int(lengths.sum()) - int(gaps.sum())  # rounding leftovers to the last gap
    starts = np.cumsum(gaps[:-1]) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return [(int(s), int(s + n)) for s, n in zip(starts, lengths, strict=True)]


def idle_and_act(
    rng: np.random.Generator, segments: list[tuple[int, int]], motions: list[str], num_frames: int,
    look: Appearance, speed: tuple[float, float], height: int, width: int,
) -> Trajectory:
    """One actor's pose over a long video: each segment's motion, idle (static) in between.

    In each gap the actor rests at the previous instance's last pose, then (a cut at the middle of the
    gap) at the next instance's first pose, so that no boundary of an instance is marked by a cut.
    """
    moves = []
    for (start, end), name in zip(segments, motions, strict=True):
        u = np.linspace(0.0, 1.0, end - start)
        offsets = motion_offsets(name, u, min(height, width), rng.uniform(*speed), rng)
        moves.append(place(offsets, rng.uniform(0, 2 * np.pi), look.radius, height, width, rng))
    parts, cursor = [static_pose(moves[0], 0, segments[0][0])], segments[0][0]
    for k, (start, end) in enumerate(segments):
        if k > 0:
            half = (start - cursor) // 2
            parts += [static_pose(moves[k - 1], -1, half), static_pose(moves[k], 0, start - cursor - half)]
        parts.append(moves[k])
        cursor = end
    parts.append(static_pose(moves[-1], -1, num_frames - cursor))
    return concat(parts)


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Background:
    """A drifting, textured, low-saturation background."""

    texture: np.ndarray  # [H, W] periodic smooth noise in [0, 1]
    tint: np.ndarray  # [3] small colour cast around 1
    drift: tuple[float, float]  # (vy, vx) texture drift, pixels per frame
    stripe_freq: tuple[float, float]  # (fy, fx) stripe frequency, cycles per pixel
    stripe_speed: float  # stripe phase change, radians per frame
    stripe_contrast: float  # amplitude of the stripes


def random_background(rng: np.random.Generator, height: int, width: int) -> Background:
    """Draw a periodic low-pass noise texture (FFT-filtered) and drifting stripes."""
    spectrum = np.fft.fft2(rng.standard_normal((height, width)))
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    cutoff = rng.uniform(0.04, 0.08)  # cycles per pixel: blobs of ~1/cutoff pixels
    smooth = np.real(np.fft.ifft2(spectrum * np.exp(-(fx**2 + fy**2) / (2 * cutoff**2))))
    smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-8)
    theta, period = rng.uniform(0, np.pi), rng.uniform(10.0, 24.0)
    return Background(
        texture=np.clip(0.5 + 0.13 * smooth, 0.05, 0.95).astype(np.float32),
        tint=(1.0 + rng.uniform(-0.06, 0.06, size=3)).astype(np.float32),
        drift=(rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)),
        stripe_freq=(np.sin(theta) / period, np.cos(theta) / period),
        stripe_speed=rng.uniform(-0.25, 0.25),
        stripe_contrast=rng.uniform(0.03, 0.08),
    )


def render_background(bg: Background, frames: np.ndarray) -> np.ndarray:
    """Background of the given frame numbers (int [T]); float32 [T, H, W, 3]."""
    height, width = bg.texture.shape
    t = frames.astype(np.float64)[:, None, None]
    rows = (np.arange(height)[None, :, None] - np.round(bg.drift[0] * t).astype(np.int64)) % height
    cols = (np.arange(width)[None, None, :] - np.round(bg.drift[1] * t).astype(np.int64)) % width
    gray = bg.texture[rows, cols]  # [T, H, W]
    ys, xs = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    phase = 2 * np.pi * (bg.stripe_freq[0] * ys + bg.stripe_freq[1] * xs) - bg.stripe_speed * t
    gray = gray + bg.stripe_contrast * np.sin(phase).astype(np.float32)
    return gray[..., None] * bg.tint  # [T, H, W, 3]


def _local_coords(traj: Trajectory, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in each frame's shape coordinates (along, across the body, unscaled); [T, H, W] each."""
    ddx = (np.arange(width) + 0.5)[None, None, :] - traj.cx[:, None, None]
    ddy = (np.arange(height) + 0.5)[None, :, None] - traj.cy[:, None, None]
    cos, sin = np.cos(traj.angle)[:, None, None], np.sin(traj.angle)[:, None, None]
    s = traj.scale[:, None, None]
    return (cos * ddx + sin * ddy) / s, (-sin * ddx + cos * ddy) / s


def paint_actor(
    frames: np.ndarray, traj: Trajectory, look: Appearance, present: np.ndarray
) -> np.ndarray:
    """Paint an actor into `frames` (float32 [T, H, W, 3], in place) where `present` (bool [T]).

    Returns:
        bool [T, H, W]: the actor's full mask in each frame (all False where it is absent).
    """
    along, across = _local_coords(traj, frames.shape[1], frames.shape[2])
    mask = (np.abs(along / look.half_length) ** look.exponent
            + np.abs(across / look.half_width) ** look.exponent) <= 1.0
    mask &= present[:, None, None]
    stripes = (0.75 + 0.25 * np.cos(2 * np.pi * along / look.stripe_period)).astype(np.float32)
    head = (along > 0.45 * look.half_length)[..., None]
    body = stripes[..., None] * look.body_rgb.astype(np.float32)  # [T, H, W, 3]
    colour = np.where(head, look.head_rgb.astype(np.float32), body)
    np.copyto(frames, colour, where=mask[..., None])
    return mask


@dataclass(frozen=True)
class Blob:
    """A distractor: a shaded disc wandering on a smooth random path for the whole video."""

    radius: float  # pixels
    rgb: np.ndarray  # [3]
    centre: tuple[float, float]  # (cy, cx) of the path
    amplitude: tuple[float, float]  # (ay, ax) pixels
    freq: tuple[float, float]  # (fy, fx) cycles per frame
    phase: tuple[float, float]  # radians


def random_blob(rng: np.random.Generator, height: int, width: int) -> Blob:
    """Draw a distractor that stays inside the frame."""
    radius = rng.uniform(0.05, 0.09) * min(height, width)
    ay, ax = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
    return Blob(
        radius=radius,
        rgb=_hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0)),
        centre=(height / 2 + rng.uniform(-1, 1) * (height / 2 - ay - radius),
                width / 2 + rng.uniform(-1, 1) * (width / 2 - ax - radius)),
        amplitude=(ay, ax),
        freq=(rng.uniform(0.005, 0.02), rng.uniform(0.005, 0.02)),
        phase=(rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)),
    )


def paint_blob(frames: np.ndarray, blob: Blob, frame_numbers: np.ndarray) -> None:
    """Paint a distractor into `frames` (float32 [T, H, W, 3], in place)."""
    t = frame_numbers.astype(np.float64)[:, None, None]
    cy = blob.centre[0] + blob.amplitude[0] * np.sin(2 * np.pi * blob.freq[0] * t + blob.phase[0])
    cx = blob.centre[1] + blob.amplitude[1] * np.sin(2 * np.pi * blob.freq[1] * t + blob.phase[1])
    ys, xs = np.arange(frames.shape[1])[None, :, None] + 0.5, np.arange(frames.shape[2])[None, None, :] + 0.5
    d2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / blob.radius**2  # [T, H, W]
    shade = (1.0 - 0.4 * d2).astype(np.float32)[..., None] * blob.rgb.astype(np.float32)
    np.copyto(frames, shade, where=(d2 <= 1.0)[..., None])


@dataclass(frozen=True)
class Occluder:
    """A grey bar in front of everything; vertical or horizontal, static or swinging slowly."""

    vertical: bool
    position: float  # centre coordinate across the bar, pixels
    half_thickness: float  # pixels
    swing: float  # amplitude of its motion, pixels (0 = static)
    freq: float  # cycles per frame
    gray: float  # brightness in [0, 1]


def random_occluder(rng: np.random.Generator, height: int, width: int) -> Occluder:
    """Draw a bar thinner than a typical actor, so that it hides part of an actor, not all of it."""
    vertical = bool(rng.uniform() < 0.5)
    extent = width if vertical else height
    return Occluder(
        vertical=vertical,
        position=rng.uniform(0.25, 0.75) * extent,
        half_thickness=rng.uniform(0.03, 0.05) * extent,
        swing=0.0 if rng.uniform() < 0.5 else rng.uniform(0.1, 0.25) * extent,
        freq=rng.uniform(0.01, 0.03),
        gray=rng.uniform(0.15, 0.35),
    )


def paint_occluder(frames: np.ndarray, occ: Occluder, frame_numbers: np.ndarray) -> None:
    """Paint the bar into `frames` (float32 [T, H, W, 3], in place)."""
    centre = occ.position + occ.swing * np.sin(2 * np.pi * occ.freq * frame_numbers.astype(np.float64))
    n = frames.shape[2] if occ.vertical else frames.shape[1]
    inside = np.abs((np.arange(n) + 0.5)[None, :] - centre[:, None]) <= occ.half_thickness  # [T, n]
    where = inside[:, None, :, None] if occ.vertical else inside[:, :, None, None]
    np.copyto(frames, np.float32(occ.gray), where=np.broadcast_to(where, frames.shape))


def quantise(frames: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian pixel noise (std `noise`, in [0, 1] units) and convert to uint8 [T, H, W, 3]."""
    if noise > 0:
        frames = frames + noise * rng.standard_normal(frames.shape, dtype=np.float32)
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
