"""The NYU Hand Pose Dataset's on-disk format: depth PNGs, joint_data.mat and the camera.

Tompson et al., "Real-Time Continuous Pose Recovery of Human Hands Using Convolutional Networks",
TOG 2014. Each of `train/` and `test/` holds, for frames numbered from 1 and Kinects k = 1..3,
`depth_k_NNNNNNN.png` (the Kinect's frame), `synthdepth_k_NNNNNNN.png` (the fitted hand model
rendered alone), `rgb_k_NNNNNNN.png`, and one `joint_data.mat` for the folder. This project reads
camera 1 only; the other cameras' files may be present and are ignored.

Depth PNGs are 640x480 8-bit RGB: the depth in millimetres is green * 256 + blue, red is unused, and
0 means no depth. joint_data.mat holds `joint_names` (a 1x36 cell array of strings) and
`joint_uvd` / `joint_xyz`, each (cameras, frames, 36, 3): u, v in pixels and d in mm; x, y, z in mm.

Pure host code (numpy, SciPy, Pillow); no TensorFlow.
"""
import io
import os

import numpy as np
import scipy.io
from PIL import Image

from utils import atomic_write

# The 36 labelled points, in the order of joint_names (the data set's own MATLAB script lists them so)
# and of the arrays' third axis: six per finger from F1 (loaders read it as the little finger) to F4 (the
# index finger), six for the thumb (TH), six on the palm and wrist. A finger's points run from its tip
# (KNU3_A) toward the palm; loaders commonly read KNU3_B, KNU2_B and KNU1_A as the DIP, PIP and MCP joints.
JOINT_NAMES = [f"{finger}_KNU{knuckle}_{side}" for finger in ("F1", "F2", "F3", "F4", "TH")
               for knuckle in (3, 2, 1) for side in ("A", "B")] + [f"PALM_{i}" for i in range(1, 7)]
NUM_JOINTS = len(JOINT_NAMES)  # 36

# The 14 joints of the usual NYU evaluation (the subset of Tompson et al. 2014 that DeepPrior and the
# papers comparing with it score), 0-based: each finger's tip (KNU3_A) and KNU2_B, the thumb's KNU3_A,
# KNU3_B and KNU2_B, and PALM_1, PALM_2 (commonly drawn as the wrist's two sides) and PALM_3 (the palm).
EVALUATION_JOINTS = [0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32]

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
# NYU's convert_uvd_to_xyz.m: x = (u / 640 - 0.5) * z * X_Z_FACTOR, y = (0.5 - v / 480) * z * Y_Z_FACTOR,
# a pinhole camera with these focal lengths (588.04 and 587.08 px) and the principal point mid-frame.
X_Z_FACTOR, Y_Z_FACTOR = 1.08836710, 0.817612648
FX, FY = FRAME_WIDTH / X_Z_FACTOR, FRAME_HEIGHT / Y_Z_FACTOR
CX, CY = FRAME_WIDTH / 2, FRAME_HEIGHT / 2

JOINT_FILE = "joint_data.mat"
# scipy.io.savemat writes time.asctime() into the header; a fixed text makes equal content equal bytes.
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: data.nyu"
PNG_COMPRESS_LEVEL = 1  # on a noisy depth frame, level 6 saves a fifth of the bytes at three times the time


def depth_name(frame):
    """Camera 1's Kinect depth frame, e.g. depth_1_0000001.png; frames are numbered from 1."""
    return f"depth_1_{frame:07d}.png"


def synthetic_depth_name(frame):
    """Camera 1's rendered hand model, e.g. synthdepth_1_0000001.png; frames are numbered from 1."""
    return f"synthdepth_1_{frame:07d}.png"


# ---- depth images ----

def decode_depth(rgb):
    """uint16 (H, W) depth in mm of an NYU depth image's uint8 (H, W, 3) pixels: green << 8 | blue."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"an NYU depth image is uint8 (height, width, 3), not {rgb.dtype} {rgb.shape}")
    return (rgb[..., 1].astype(np.uint16) << 8) | rgb[..., 2]


def encode_depth(depth_mm):
    """uint8 (H, W, 3) NYU pixels of a depth in mm (whole numbers 0..65535): red 0, green high, blue low byte."""
    depth_mm = np.asarray(depth_mm)
    if depth_mm.ndim != 2 or depth_mm.dtype.kind not in "uif":
        raise ValueError(f"a depth map is a (height, width) array of numbers, not {depth_mm.dtype} {depth_mm.shape}")
    if depth_mm.size and not (np.all(np.isfinite(depth_mm)) and depth_mm.min() >= 0 and depth_mm.max() <= 65535):
        raise ValueError("depth must be finite and within 0..65535 mm")
    depth = np.rint(depth_mm).astype(np.uint16)
    rgb = np.zeros((*depth.shape, 3), np.uint8)
    rgb[..., 1] = depth >> 8
    rgb[..., 2] = depth & 0xFF
    return rgb


def read_depth(path):
    """uint16 (H, W) depth in mm of an NYU depth PNG; OSError if unreadable, ValueError if not RGB."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes now, so a truncated file fails here
            mode, pixels = image.mode, np.asarray(image)
    except OSError as error:  # missing, not an image, truncated (PIL.UnidentifiedImageError is an OSError)
        reason = error.strerror or str(error).splitlines()[0]
        raise OSError(f"cannot read depth image {path}: {reason}") from None
    if mode != "RGB":
        raise ValueError(f"{path} is a {mode} image, not the 8-bit RGB of an NYU depth frame")
    return decode_depth(pixels)


def write_depth(path, depth_mm):
    """Write a depth map in mm as an NYU depth PNG, atomically."""
    image = Image.fromarray(encode_depth(depth_mm))
    atomic_write(os.fspath(path), lambda handle: image.save(handle, format="PNG", compress_level=PNG_COMPRESS_LEVEL))


# ---- joint_data.mat ----

def _names(path, mat):
    """The joint names of a loaded joint_data.mat as str; ValueError unless there are 36."""
    cells = np.asarray(mat["joint_names"], dtype=object).ravel()
    # loadmat gives each cell as a 1-element array of str (or an empty array for an empty string).
    names = [str(np.asarray(cell).ravel()[0]) if np.asarray(cell).size else "" for cell in cells]
    if len(names) != NUM_JOINTS:
        raise ValueError(f"{path}: joint_names holds {len(names)} names, not {NUM_JOINTS}")
    return names


def _camera_1(path, mat, key):
    """Camera 1's float32 (frames, 36, 3) of a (cameras, frames, 36, 3) array; ValueError if it is not one."""
    array = np.asarray(mat[key])
    if array.ndim != 4 or array.shape[0] < 1 or array.shape[2:] != (NUM_JOINTS, 3) or array.dtype.kind not in "uif":
        raise ValueError(f"{path}: {key} is {array.dtype} {array.shape}, not numbers of shape "
                         f"(cameras, frames, {NUM_JOINTS}, 3)")
    return array[0].astype(np.float32)


def read_joint_data(path):
    """(joint_names, joint_uvd, joint_xyz) of a joint_data.mat: 36 str, camera 1's float32 (frames, 36, 3) twice."""
    try:
        mat = scipy.io.loadmat(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:  # the file cannot even be opened
        raise OSError(f"cannot read {path}: {error.strerror}") from None
    except Exception as error:  # damaged: SciPy raises OSError, ValueError, NotImplementedError (v7.3), ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: unreadable .mat ({reason})") from None
    missing = [key for key in ("joint_names", "joint_uvd", "joint_xyz") if key not in mat]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} in the file")
    names, uvd, xyz = _names(path, mat), _camera_1(path, mat, "joint_uvd"), _camera_1(path, mat, "joint_xyz")
    if len(uvd) != len(xyz):
        raise ValueError(f"{path}: joint_uvd has {len(uvd)} frames but joint_xyz has {len(xyz)}")
    if not len(uvd):
        raise ValueError(f"{path}: no frames")
    return names, uvd, xyz


def write_joint_data(path, joint_uvd, joint_xyz):
    """Write joint_data.mat of one camera's (frames, 36, 3) labels, atomically; equal labels give equal bytes."""
    arrays = {}
    for key, array in (("joint_uvd", joint_uvd), ("joint_xyz", joint_xyz)):
        array = np.asarray(array, dtype=np.float64)  # MATLAB's double, as the data set's own script saves
        if array.ndim != 3 or array.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(f"{key} must be (frames, {NUM_JOINTS}, 3), not {array.shape}")
        arrays[key] = array[None]  # (cameras, frames, 36, 3) with one camera
    if arrays["joint_uvd"].shape != arrays["joint_xyz"].shape:
        raise ValueError(f"joint_uvd has {arrays['joint_uvd'].shape[1]} frames but joint_xyz has "
                         f"{arrays['joint_xyz'].shape[1]}")
    names = np.empty((1, NUM_JOINTS), dtype=object)  # savemat writes an object array as a cell array
    names[0, :] = JOINT_NAMES
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"joint_names": names, **arrays}, format="5", do_compression=True)
    content = bytearray(buffer.getvalue())
    content[:116] = MAT_HEADER.ljust(116, b" ")
    atomic_write(os.fspath(path), lambda handle: handle.write(bytes(content)))


# ---- the camera ----
# NYU's xyz: x to the right, y UP, z away from the camera, in mm; its uvd: u to the right and v DOWN in
# pixels, d = z. So v grows as y falls: v = CY - FY * y / z.

def uvd_to_xyz(uvd):
    """(..., 3) NYU u, v (pixels), d (mm) to x, y, z (mm) with NYU's pinhole camera."""
    uvd = np.asarray(uvd, dtype=np.float64)
    depth = uvd[..., 2]
    return np.stack([(uvd[..., 0] - CX) * depth / FX, (CY - uvd[..., 1]) * depth / FY, depth], axis=-1)


def xyz_to_uvd(xyz):
    """(..., 3) NYU x, y, z (mm) to u, v (pixels), d (mm) with NYU's pinhole camera."""
    xyz = np.asarray(xyz, dtype=np.float64)
    depth = xyz[..., 2]
    return np.stack([CX + FX * xyz[..., 0] / depth, CY - FY * xyz[..., 1] / depth, depth], axis=-1)
