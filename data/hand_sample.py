"""The bundled sample hand data: a procedural hand written in the NYU Hand Pose Dataset's exact format.

The real data set cannot be downloaded on a fresh machine, so this module builds a hand of an ellipsoid
palm and finger capsules, poses it at random, and writes `hand_dir/train/` and `hand_dir/test/` as NYU
lays them out (see data/nyu.py): per frame i (from 1) `synthdepth_1_{i:07d}.png`, a clean render of the
hand alone on 0, and `depth_1_{i:07d}.png`, what a Kinect makes of the same pose in a room (forearm, body,
wall; depth quantised in disparity, noise, projector shadows and broken edges as holes), and one
`joint_data.mat` of the 36 NYU joints. NYU's rgb_* frames are not written. As in NYU, both images of an
index show the same pose; SimGAN's refiner only ever sees the real frames as unlabelled images.

`write_hand_sample` is the entry point. Every frame draws from its own random streams keyed by the seed,
the split and its index, so the same arguments (with the same Pillow and SciPy) give byte-identical
files. Everything is written into a staging folder and renamed into place, test first and train last,
so a `train` folder means the sample is complete.

Usage: ``python -m data.hand_sample --out DIR [--num_train N] [--num_test N] [--seed S]``.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom
from scipy.spatial.transform import Rotation

from data import nyu
from data.sample_staging import SampleLayout, check_counts, command_line, run_tasks

# ---- the hand model: mm, in the hand's frame (x toward the thumb, y from the wrist to the fingers,
# z out of the back of the hand), a right hand of an adult

# NYU's finger -> (knuckle, bone lengths and radii from the knuckle out, spread toward the thumb in degrees)
FINGERS = {"F1": ((-27.0, 74.0, 0.0), (32.0, 19.0, 18.0), (7.8, 7.0, 6.3), -15.0),  # little
           "F2": ((-10.0, 84.0, 0.0), (41.0, 26.0, 20.0), (8.8, 8.0, 7.0), -6.0),  # ring
           "F3": ((8.0, 88.0, 0.0), (44.0, 27.0, 20.0), (9.2, 8.3, 7.3), 2.0),  # middle
           "F4": ((25.0, 82.0, 0.0), (39.0, 23.0, 19.0), (9.0, 8.1, 7.1), 10.0)}  # index
THUMB_BASE, THUMB_LENGTHS, THUMB_RADII = (22.0, 15.0, -8.0), (42.0, 32.0, 26.0), (12.5, 10.0, 9.0)
PALM_CENTRE, PALM_RADII = (0.0, 45.0, 0.0), (44.0, 50.0, 15.0)
# PALM_1..6: the wrist's little-finger and thumb sides, the palm's centre, under the little and the
# index finger, the wrist's centre (the sample's choice where NYU's documentation is silent).
PALM_POINTS = ((-22.0, 2.0, 0.0), (22.0, 2.0, 0.0), (0.0, 45.0, 0.0), (-25.0, 58.0, 0.0), (20.0, 60.0, 0.0),
               (0.0, 0.0, 0.0))
DORSAL = np.array([0.0, 0.0, 1.0])
HAND_DEPTH_MM = (500.0, 900.0)  # the palm's distance from the camera
FRAME_SHAPE = (nyu.FRAME_HEIGHT, nyu.FRAME_WIDTH)
FRAME_MARGIN = 12  # pixels every joint keeps from the frame's border

# ---- the room and the Kinect
FOREARM_LENGTH, FOREARM_RADIUS = 260.0, 31.0
TORSO_RADII = (220.0, 450.0, 140.0)
WALL_DEPTH_MM = (1500.0, 2500.0)
BASELINE_MM = 75.0  # Kinect v1: its projector sits this far to the IR camera's side
SUBPIXEL = 8  # Kinect v1 measures disparity in 1/8 pixel: depth steps grow with the square of depth
EDGE_JUMP_MM = 30.0  # a depth step this big between neighbours is an object's edge

_POSE, _ROOM = range(2)  # sub-stream tags, so each frame's randomness is independent of the counts
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Capsule:
    """A segment swept by a sphere (a finger bone, the forearm), in camera xyz mm.

    As every shape: box() gives its bounding box's low and high corners, depth(x, y) its near side's depth
    along the rays t * (x, y, 1), inf where a ray misses it.
    """
    start: np.ndarray
    end: np.ndarray
    radius: float

    def box(self):
        return np.minimum(self.start, self.end) - self.radius, np.maximum(self.start, self.end) + self.radius

    def depth(self, x, y):
        ends = np.minimum(_sphere_depth(x, y, self.start, self.radius), _sphere_depth(x, y, self.end, self.radius))
        return np.minimum(_cylinder_depth(x, y, self.start, self.end, self.radius), ends)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid (the palm, the torso): its centre, unit axes (rows) and radii along them."""
    centre: np.ndarray
    axes: np.ndarray
    radii: np.ndarray

    def box(self):
        half = np.sqrt(((self.axes * self.radii[:, None]) ** 2).sum(0))
        return self.centre - half, self.centre + half

    def depth(self, x, y):
        # Scaled to a unit sphere in its own frame, the ray t * (x, y, 1) becomes t * direction - centre.
        direction = [(axis[0] * x + axis[1] * y + axis[2]) / radius for axis, radius in zip(self.axes, self.radii)]
        centre = self.axes @ self.centre / self.radii
        squared = sum(d * d for d in direction)
        along = sum(d * c for d, c in zip(direction, centre))
        return _nearer_root(squared, along, float(centre @ centre) - 1.0)


@dataclass(frozen=True)
class Hand:
    """One posed hand: NYU's 36 joints and the shapes that draw it, in camera xyz mm."""
    joints: np.ndarray  # (36, 3) in JOINT_NAMES' order
    shapes: list
    forearm: Capsule  # from the wrist to the elbow; only the real frames show it


# ---- depth along the pixels' rays: each ray is t * (x, y, 1), so t is the depth in mm

def _nearer_root(squared, along, constant):
    """The smaller t of squared * t^2 - 2 * along * t + constant = 0; inf where there is none."""
    discriminant = along * along - squared * constant
    root = (along - np.sqrt(np.maximum(discriminant, 0.0))) / squared
    return np.where(discriminant >= 0.0, root, np.inf)


def _sphere_depth(x, y, centre, radius):
    along = x * centre[0] + y * centre[1] + centre[2]
    return _nearer_root(x * x + y * y + 1.0, along, float(centre @ centre) - radius * radius)


def _cylinder_depth(x, y, start, end, radius):
    """The open cylinder of a capsule: the distance to its axis is radius, between the two ends."""
    length = float(np.linalg.norm(end - start))
    axis = (end - start) / length
    ray_axis = x * axis[0] + y * axis[1] + axis[2]
    start_axis = float(start @ axis)
    squared = np.maximum(x * x + y * y + 1.0 - ray_axis * ray_axis, 1e-12)
    along = x * start[0] + y * start[1] + start[2] - ray_axis * start_axis
    depth = _nearer_root(squared, along, float(start @ start) - start_axis ** 2 - radius * radius)
    position = depth * ray_axis - start_axis  # where along the axis the ray meets the cylinder
    return np.where((position >= 0.0) & (position <= length), depth, np.inf)


def _window(shape, frame_shape):
    """(rows, cols) slices of the pixels a shape's bounding box projects onto; None if it is off the frame."""
    low, high = shape.box()
    corners = np.array(np.meshgrid(*zip(low, high))).reshape(3, -1).T
    corners[:, 2] = np.maximum(corners[:, 2], 1.0)  # all our shapes lie well in front of the camera
    uvd = nyu.xyz_to_uvd(corners)
    left, top = np.floor(uvd[:, :2].min(0)).astype(int)
    right, bottom = np.ceil(uvd[:, :2].max(0)).astype(int) + 1
    rows = slice(max(top, 0), min(bottom, frame_shape[0]))
    cols = slice(max(left, 0), min(right, frame_shape[1]))
    return (rows, cols) if rows.start < rows.stop and cols.start < cols.stop else None


def _ray_grid(frame_shape):
    """Each pixel's ray (x, y) with z = 1: column c and row r are NYU's u = c and v = r."""
    rows, cols = np.arange(frame_shape[0], dtype=np.float64), np.arange(frame_shape[1], dtype=np.float64)
    return ((cols - nyu.CX) / nyu.FX)[None, :], ((nyu.CY - rows) / nyu.FY)[:, None]


def render(shapes, depth):
    """Draw shapes into depth (mm, inf where empty) in place, keeping the nearest surface; returns depth."""
    x, y = _ray_grid(depth.shape)
    for shape in shapes:
        window = _window(shape, depth.shape)
        if window is not None:
            rows, cols = window
            np.minimum(depth[rows, cols], shape.depth(x[:, cols], y[rows, :]), out=depth[rows, cols])
    return depth


# ---- posing the hand

def _turn(vector, axis, degrees):
    return Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).apply(vector)


def _chain(base, direction, lengths, flexions):
    """The base and the end of each bone, every bone bent toward the palm by its flexion (degrees)."""
    points = [np.asarray(base)]
    for length, flexion in zip(lengths, flexions):
        direction = _turn(direction, np.cross(direction, DORSAL), -flexion)
        points.append(points[-1] + length * direction)
    return points


def _finger_flexions(rng, closure):
    """MCP, PIP and DIP flexion in degrees: the fingers curl together, each a little its own way."""
    curl = 0.0 if rng.random() < 0.25 else float(np.clip(closure + rng.normal(0.0, 0.15), 0.0, 1.0))
    knuckle = np.clip(80.0 * curl + rng.normal(0.0, 8.0), -10.0, 90.0)
    middle = np.clip(100.0 * curl + rng.normal(0.0, 8.0), 0.0, 110.0)
    end = np.clip(0.7 * middle + rng.normal(0.0, 5.0), 0.0, 80.0)  # tendons couple the DIP to the PIP
    return knuckle, middle, end


def _hand_in_its_frame(rng):
    """(36 joints, capsules as (start, end, radius)) of a random articulation, in the hand's frame.

    A finger's KNU3_A..KNU1_B are placed at its tip, DIP, middle phalanx, PIP, MCP and on its metacarpal;
    the thumb's at its tip, IP, proximal phalanx, MCP, metacarpal and CMC joint.
    """
    closure, joints, capsules = rng.uniform(0.0, 1.0), [], []
    for knuckle, lengths, radii, spread in FINGERS.values():
        spread = spread * (1.0 - closure) * rng.uniform(0.3, 1.4)  # a fist closes the spread
        direction = _turn(np.array([0.0, 1.0, 0.0]), DORSAL, -spread)
        base, middle, end, tip = _chain(knuckle, direction, lengths, _finger_flexions(rng, closure))
        metacarpal = base + 0.3 * (np.array([0.4 * base[0], 10.0, 0.0]) - base)  # 30% of the way to the carpus
        joints += [tip, end, (end + middle) / 2, middle, base, metacarpal]
        capsules += [(base, middle, radii[0]), (middle, end, radii[1]), (end, tip, radii[2])]
    spread = np.radians(rng.uniform(25.0, 65.0))
    direction = np.array([np.cos(spread), np.sin(spread), -0.5]) / np.hypot(1.0, 0.5)
    flexions = rng.uniform(-5.0, 35.0), rng.uniform(0.0, 50.0), rng.uniform(0.0, 60.0)
    base, middle, end, tip = _chain(THUMB_BASE, direction, THUMB_LENGTHS, flexions)
    joints += [tip, end, (end + middle) / 2, middle, (middle + base) / 2, base]
    capsules += [(base, middle, THUMB_RADII[0]), (middle, end, THUMB_RADII[1]), (end, tip, THUMB_RADII[2])]
    return np.array(joints + [np.array(point) for point in PALM_POINTS]), capsules


def _orientation(rng):
    """Fingers up give or take 60 degrees, any side toward the camera, tilted up to 40 degrees."""
    roll, pitch, yaw = rng.uniform(-60.0, 60.0), rng.uniform(-40.0, 40.0), rng.uniform(-180.0, 180.0)
    return (Rotation.from_euler("z", roll, degrees=True) * Rotation.from_euler("x", pitch, degrees=True)
            * Rotation.from_euler("y", yaw, degrees=True))


def _placement(rng, joints):
    """The offset that puts the palm centre at a random spot 500-900 mm away with every joint in the frame."""
    palm, far_corner = joints[nyu.JOINT_NAMES.index("PALM_3")], np.array(FRAME_SHAPE[::-1]) - FRAME_MARGIN
    for _ in range(20):
        centre = nyu.uvd_to_xyz([rng.uniform(160.0, 480.0), rng.uniform(130.0, 350.0), rng.uniform(*HAND_DEPTH_MM)])
        uv = nyu.xyz_to_uvd(joints - palm + centre)[:, :2]
        if np.all(uv >= FRAME_MARGIN) and np.all(uv <= far_corner):
            return centre - palm
    return nyu.uvd_to_xyz([nyu.CX, nyu.CY, HAND_DEPTH_MM[1]]) - palm  # mid-frame and far: any hand fits


def make_hand(rng):
    """A random hand of random size, articulation, orientation and place, in camera xyz."""
    joints, capsules = _hand_in_its_frame(rng)
    scale, rotation = rng.uniform(0.88, 1.08), _orientation(rng)
    joints = rotation.apply(scale * joints)
    offset = _placement(rng, joints)

    def place(point):
        return rotation.apply(scale * np.asarray(point)) + offset

    shapes = [Capsule(place(start), place(end), scale * radius) for start, end, radius in capsules]
    shapes.append(Ellipsoid(place(PALM_CENTRE), rotation.as_matrix().T, scale * np.array(PALM_RADII)))
    # The elbow is lower than the hand and further from the camera than it, as a hand held up is.
    wrist, toward_elbow = place((0.0, -10.0, 0.0)), rotation.apply([0.0, -1.0, 0.0]) + [0.0, -0.4, 0.9]
    elbow = wrist + FOREARM_LENGTH * toward_elbow / np.linalg.norm(toward_elbow)
    return Hand(joints + offset, shapes, Capsule(wrist, elbow, FOREARM_RADIUS))


# ---- the two images of a frame

def synthetic_frame(hand):
    """uint16 depth (mm) of the hand alone, clean, 0 where there is no hand."""
    depth = render(hand.shapes, np.full(FRAME_SHAPE, np.inf))
    return np.where(np.isfinite(depth), np.rint(depth), 0).astype(np.uint16)


def _room(hand, rng):
    """Float depth (mm) of the scene: the hand, its forearm, the body behind and a wall everywhere else."""
    x, y = _ray_grid(FRAME_SHAPE)
    tilt_x, tilt_y = rng.uniform(-0.25, 0.25, 2)  # a wall not quite facing the camera
    depth = rng.uniform(*WALL_DEPTH_MM) / (1.0 + tilt_x * x + tilt_y * y)
    # The body stands behind and below the raised hand, a little to a side, and leans a little.
    below = [rng.uniform(-250.0, 250.0), -rng.uniform(300.0, 500.0), rng.uniform(250.0, 450.0)]
    lean = Rotation.from_euler("z", rng.uniform(-15.0, 15.0), degrees=True).as_matrix().T
    torso = Ellipsoid(hand.forearm.start + below, lean, np.array(TORSO_RADII))
    return render([torso, hand.forearm, *hand.shapes], depth)


def _projector_shadow(disparity):
    """Pixels the Kinect's projector cannot light: a nearer surface is on their projector ray."""
    # The projector sits BASELINE_MM to the camera's right, so a point seen in column u has the projector
    # column u - disparity, and along a row the surface of largest disparity in each projector column is lit.
    rows, cols = np.indices(disparity.shape)
    column = np.clip(np.rint(cols - disparity).astype(int) + disparity.shape[1], 0, 2 * disparity.shape[1] - 1)
    lit = np.zeros((disparity.shape[0], 2 * disparity.shape[1]))
    np.maximum.at(lit, (rows, column), disparity)
    return disparity < lit[rows, column] - 2.0


def _broken_edges(depth, rng):
    """Pixels at a depth edge the sensor loses, in ragged 3-pixel blocks as its matching window leaves them."""
    across, down = np.abs(np.diff(depth, axis=1)) > EDGE_JUMP_MM, np.abs(np.diff(depth, axis=0)) > EDGE_JUMP_MM
    near = np.zeros(depth.shape, bool)  # the pixels either side of each step
    near[:, 1:] |= across
    near[:, :-1] |= across
    near[1:] |= down
    near[:-1] |= down
    blocks = rng.random((-(-depth.shape[0] // 3), -(-depth.shape[1] // 3))) < 0.5
    return near & np.kron(blocks, np.ones((3, 3), bool))[:depth.shape[0], :depth.shape[1]]


def real_frame(hand, rng):
    """uint16 depth (mm) of the hand in a room as a Kinect sees it: quantised, noisy, with holes (0)."""
    depth = _room(hand, rng)
    disparity = BASELINE_MM * nyu.FX / depth  # pixels
    holes = _projector_shadow(disparity) | _broken_edges(depth, rng)
    # Noise and rounding happen in disparity, so both grow with the square of the depth, as a Kinect's do;
    # its matching window makes neighbours err alike, hence noise in 4-pixel blobs plus a little per pixel.
    blobs = zoom(rng.standard_normal((FRAME_SHAPE[0] // 4, FRAME_SHAPE[1] // 4), np.float32), 4, order=1)
    noise = rng.uniform(0.5, 1.0) * blobs + 0.3 * rng.standard_normal(FRAME_SHAPE, np.float32)
    steps = np.maximum(np.rint(SUBPIXEL * disparity + noise), 1.0)
    measured = np.rint(SUBPIXEL * BASELINE_MM * nyu.FX / steps)
    return np.where(holes, 0, np.minimum(measured, 65535)).astype(np.uint16)


# ---- writing

LAYOUT = SampleLayout("data.hand_sample", ("test", "train"), marker_name=".hand_sample.json",
                      staging_name=".hand_sample.partial")
FRAMES_PER_TASK = 25  # frames per worker task: the hand-off is amortised, and the pool still ends evenly
_PARALLEL_MIN = 32  # fewer frames than this are not worth starting processes for
NUM_TRAIN, NUM_TEST = 500, 100  # at ~0.2 MB and ~0.17 s of a core a frame: ~110 MB in under two minutes


@dataclass(frozen=True)
class HandSampleReport:
    """What write_hand_sample wrote, and how long it took."""
    train_dir: Path
    test_dir: Path
    num_train: int
    num_test: int
    seconds: float


def write_frames(directory, seed, split, start, stop):
    """Write frames start..stop-1 of a split, both depth images each; their joints in xyz, (frames, 36, 3)."""
    joints = []
    for frame in range(start, stop):
        hand = make_hand(np.random.default_rng([seed, _POSE, split, frame]))
        nyu.write_depth(Path(directory, nyu.synthetic_depth_name(frame)), synthetic_frame(hand))
        real = real_frame(hand, np.random.default_rng([seed, _ROOM, split, frame]))
        nyu.write_depth(Path(directory, nyu.depth_name(frame)), real)
        joints.append(hand.joints)
    return np.array(joints)


def _write_splits(staging, seed, counts, workers):
    """Write every split's frames (in worker processes when it pays), then each split's joint_data.mat."""
    tasks = [(write_frames, (staging / name, seed, split, start, min(start + FRAMES_PER_TASK, count + 1)))
             for split, (name, count) in enumerate(zip(SPLITS, counts))
             for start in range(1, count + 1, FRAMES_PER_TASK)]
    joints = run_tasks(tasks, workers, sum(counts) >= _PARALLEL_MIN)
    for split, name in enumerate(SPLITS):
        xyz = np.concatenate([part for (_, args), part in zip(tasks, joints) if args[2] == split])
        nyu.write_joint_data(staging / name / nyu.JOINT_FILE, nyu.xyz_to_uvd(xyz), xyz)


def is_hand_sample(folder):
    """True if folder (a train/ or test/ folder) was written by this module, not taken from the real data set."""
    return LAYOUT.is_sample(folder)


def write_hand_sample(hand_dir, num_train=NUM_TRAIN, num_test=NUM_TEST, size=(480, 640), seed=0, workers=None):
    """Write hand_dir/train and hand_dir/test in NYU's layout (size: its frame); a HandSampleReport.

    The same arguments give the same bytes, whatever workers (processes; None: one per usable CPU). Staged
    as LAYOUT.staged stages (data/sample_staging.py): test is renamed into place first and train last, so
    a train folder means the sample is complete; a train or test folder of other data is never touched
    (FileExistsError).
    """
    if tuple(size) != (nyu.FRAME_HEIGHT, nyu.FRAME_WIDTH):
        raise ValueError(f"size must be NYU's frame {FRAME_SHAPE}, which its camera is for, not {size!r}")
    check_counts(seed, num_train=num_train, num_test=num_test)
    started = time.perf_counter()
    with LAYOUT.staged(hand_dir, seed=seed, num_train=num_train, num_test=num_test) as staging:
        _write_splits(staging, seed, (num_train, num_test), workers)
    return HandSampleReport(Path(hand_dir, "train"), Path(hand_dir, "test"), num_train, num_test,
                            time.perf_counter() - started)


def is_complete_hand_sample(hand_dir):
    """True if hand_dir holds both splits of the bundled sample (a write interrupted between them does not)."""
    return all(is_hand_sample(Path(hand_dir, name)) for name in SPLITS)


def main(argv=None):
    """The command line: write the sample to --out and print one line of what was written."""
    command_line(argv, "Write the bundled sample hand data (NYU's layout) to a folder.",
                 "folder to write train/ and test/ into",
                 {"num_train": (NUM_TRAIN, "frames in train/"), "num_test": (NUM_TEST, "frames in test/")}, 0,
                 write_hand_sample, "[*] Wrote {num_train} train and {num_test} test frames (NYU layout) to "
                                    "{train_dir.parent} in {seconds:.1f} s")


if __name__ == "__main__":
    main()
