"""Synthetic expressive faces for the demo release, built on a real public-domain photograph.

Why a photograph: the video path of ``abaw prepare`` must find faces with a real detector, and
drawn cartoons are not faces to a detector. ``skimage.data.astronaut()`` (public domain) is aligned
once to the 112x112 ArcFace template; its mouth and brows are erased so that expressions can be
drawn on top. Each identity changes skin tone, hair colour and style, face shape, eye distance,
glasses and beard; each frame draws the expression cues (mouth curvature/opening/width, brow
height/tilt, eyelids, wrinkles) and applies a small pose and a lighting gradient.

Coordinates: "template units" are the 112x112 ArcFace crop's pixels; a render covers a canvas of
``CANVAS_SIZE`` pixels with ``CANVAS_MARGIN`` template units of context on every side, so the
aligned 112x112 face is the canvas centre and the margin holds hair, neck and background.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

FACE_SIZE = 112
CANVAS_MARGIN = 32
CANVAS_SIZE = FACE_SIZE + 2 * CANVAS_MARGIN

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
"""Five landmarks (eyes, nose tip, mouth corners) of the standard 112x112 aligned face."""

_ASTRONAUT_EYES = np.array([[204.5, 101.0], [246.5, 103.0]])
"""Pupil centres in ``skimage.data.astronaut()``, measured by hand (x, y)."""

CUE_NAMES = ("mouth_curve", "mouth_open", "mouth_width", "brow_raise", "brow_inner",
             "eye_open", "nose_wrinkle", "mouth_asym", "brow_asym")
NUM_CUES = len(CUE_NAMES)
(MOUTH_CURVE, MOUTH_OPEN, MOUTH_WIDTH, BROW_RAISE, BROW_INNER, EYE_OPEN, NOSE_WRINKLE,
 MOUTH_ASYM, BROW_ASYM) = range(NUM_CUES)

# Rows follow abaw_kit.classes.CLASS_NAMES; "Other" (row 7) is sampled, see other_cues().
# The cues overlap on purpose: Fear and Surprise share raised brows, wide eyes and an open mouth;
# Anger and Disgust share lowered brows; Sadness and Disgust share a downturned mouth.
PROTOTYPES = np.array([
    #  curve  open  width raise inner  eye  wrinkle asym basym
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],   # Neutral
    [-0.35, 0.05, -0.50, -0.80, -0.90, 0.25, 0.30, 0.00, 0.00],  # Anger
    [-0.60, 0.25, 0.10, -0.45, -0.30, -0.55, 1.00, 0.25, 0.00],  # Disgust
    [-0.25, 0.55, 0.75, 0.65, 0.85, 0.90, 0.00, 0.00, 0.00],   # Fear
    [1.00, 0.35, 0.50, 0.10, 0.00, -0.40, 0.10, 0.00, 0.00],   # Happiness
    [-0.85, 0.00, -0.10, 0.05, 0.95, -0.45, 0.00, 0.00, 0.00],  # Sadness
    [0.00, 1.00, -0.35, 1.00, 0.20, 1.00, 0.00, 0.00, 0.00],   # Surprise
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],   # Other (sampled)
], dtype=np.float64)


def other_cues(rng: np.random.Generator) -> np.ndarray:
    """Cues of one "Other" segment: an atypical expression or a blend of two basic ones."""
    cues = np.zeros(NUM_CUES)
    if rng.random() < 0.55:
        cues[MOUTH_ASYM] = rng.choice([-1.0, 1.0]) * rng.uniform(0.7, 1.1)  # smirk
        cues[BROW_ASYM] = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0)
        cues[[MOUTH_CURVE, BROW_RAISE, EYE_OPEN]] = rng.normal(0.0, 0.25, 3)
    else:
        first, second = rng.choice(np.arange(1, 7), size=2, replace=False)
        weight = rng.uniform(0.35, 0.65)
        cues = weight * PROTOTYPES[first] + (1.0 - weight) * PROTOTYPES[second]
        cues[BROW_ASYM] = rng.uniform(-0.6, 0.6)
        cues[MOUTH_WIDTH] -= rng.uniform(0.0, 0.6)  # pressed lips make blends atypical
    return cues


@dataclass(frozen=True)
class Identity:
    """Everything that makes one synthetic person look different from another."""

    flip: bool
    skin_gain: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    hair_style: int  # 0 original, 1 bangs, 2 long, 3 cap
    cap_rgb: tuple[float, float, float]
    shirt_rgb: tuple[float, float, float]
    brow_rgb: tuple[float, float, float]
    brow_thickness: float
    lip_rgb: tuple[float, float, float]
    glasses: bool
    glasses_rgb: tuple[float, float, float]
    beard: float
    face_width: float
    jaw_width: float
    face_length: float
    eye_gap: float
    mouth_scale: float
    rest_cues: tuple[float, ...]
    expressiveness: float


_SKIN_TONES = np.array([[1.08, 1.02, 1.00], [1.00, 0.93, 0.88], [0.93, 0.82, 0.72],
                        [0.84, 0.70, 0.59], [0.75, 0.60, 0.49], [0.66, 0.51, 0.41]])
_HAIR_COLOURS = np.array([[25, 20, 18], [60, 40, 28], [105, 70, 40], [170, 130, 80],
                          [215, 185, 130], [140, 60, 30], [150, 150, 150], [70, 65, 60]])


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity; all choices come from ``rng`` so a seed fixes the person."""
    tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.94, 1.06, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    darkness = float(rng.uniform(0.25, 0.8))
    brow = np.minimum(hair, 110.0) * darkness + 15.0
    lip = np.array([190.0, 105.0, 100.0]) * tone * rng.uniform(0.8, 1.05, 3)
    return Identity(
        flip=bool(rng.random() < 0.5),
        skin_gain=_tuple(tone),
        hair_rgb=_tuple(np.clip(hair, 0, 255)),
        hair_style=int(rng.choice(4, p=[0.35, 0.25, 0.25, 0.15])),
        cap_rgb=_tuple(rng.uniform(20, 235, 3)),
        shirt_rgb=_tuple(rng.uniform(15, 240, 3)),
        brow_rgb=_tuple(brow),
        brow_thickness=float(rng.uniform(2.4, 4.2)),
        lip_rgb=_tuple(np.clip(lip, 0, 255)),
        glasses=bool(rng.random() < 0.25),
        glasses_rgb=_tuple(rng.uniform(0, 90, 3) if rng.random() < 0.7 else rng.uniform(0, 255, 3)),
        beard=float(rng.uniform(0.3, 0.8)) if rng.random() < 0.2 else 0.0,
        face_width=float(rng.uniform(-0.08, 0.10)),
        jaw_width=float(rng.uniform(-0.10, 0.12)),
        face_length=float(rng.uniform(-0.06, 0.08)),
        eye_gap=float(rng.uniform(-2.5, 2.5)),
        mouth_scale=float(rng.uniform(0.88, 1.12)),
        rest_cues=_tuple(rng.normal(0.0, 0.08, NUM_CUES)),
        expressiveness=float(rng.uniform(0.85, 1.15)),
    )


def _tuple(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values).ravel())


# ----------------------------------------------------------------------------- the base head

@dataclass(frozen=True)
class _Base:
    rgb: np.ndarray      # float32 [S, S, 3], 0..255, mouth and brows erased
    person: np.ndarray   # float32 [S, S], 1 on the head (hair + face)
    hair: np.ndarray     # float32 [S, S], soft hair mask
    skin_rgb: np.ndarray  # mean skin colour of the photograph


def _template_grid() -> tuple[np.ndarray, np.ndarray]:
    """Template coordinates (u, v) of every canvas pixel centre."""
    v, u = np.mgrid[0:CANVAS_SIZE, 0:CANVAS_SIZE].astype(np.float64) - CANVAS_MARGIN
    return u, v


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float,
             rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 < 1.0


@functools.lru_cache(maxsize=1)
def _base_head() -> _Base:
    """The photograph aligned to the template with mouth and brows removed (computed once)."""
    from skimage import color, data, restoration, transform

    photo = data.astronaut().astype(np.float64)
    to_photo = transform.SimilarityTransform.from_estimate(ARCFACE_TEMPLATE[:2], _ASTRONAUT_EYES)
    u, v = _template_grid()
    xy = to_photo(np.stack([u.ravel(), v.ravel()], axis=1))
    rgb = np.stack([ndimage.map_coordinates(photo[..., c], [xy[:, 1], xy[:, 0]], order=1)
                    for c in range(3)], axis=-1).reshape(CANVAS_SIZE, CANVAS_SIZE, 3)
    # Erase the photo's smile and brows; the renderer draws its own.
    erase = (_ellipse(u, v, 56.0, 90.0, 25.0, 10.5) | _ellipse(u, v, 36.5, 41.5, 14.0, 4.8)
             | _ellipse(u, v, 75.5, 41.5, 14.0, 4.8))
    rgb = restoration.inpaint_biharmonic(rgb / 255.0, erase, channel_axis=-1) * 255.0
    hsv = color.rgb2hsv(np.clip(rgb, 0, 255) / 255.0)
    background = (hsv[..., 1] < 0.13) & (hsv[..., 2] > 0.5)
    chin = _ellipse(u, v, 56.0, 78.0, 35.0, 38.0)
    person = ~background & ((v < 96.0) | chin)  # below the jaw is the space suit
    person = ndimage.binary_opening(person, iterations=2)
    labels, _ = ndimage.label(person)
    person = ndimage.binary_fill_holes(labels == labels[CANVAS_MARGIN + 60, CANVAS_MARGIN + 56])
    inner_face = _ellipse(u, v, 56.0, 72.0, 33.0, 44.0)
    hair = person & ~inner_face & ((hsv[..., 0] > 0.09) | (hsv[..., 2] < 0.5))
    hair |= person & (v < 22.0) & ~_ellipse(u, v, 56.0, 40.0, 30.0, 22.0)
    hair_soft = ndimage.gaussian_filter(hair.astype(np.float64), 1.2)
    person_soft = ndimage.gaussian_filter(person.astype(np.float64), 0.8)
    skin = _ellipse(u, v, 56.0, 75.0, 20.0, 8.0)
    return _Base(rgb=rgb.astype(np.float32), person=person_soft.astype(np.float32),
                 hair=hair_soft.astype(np.float32), skin_rgb=rgb[skin].mean(axis=0))


# ----------------------------------------------------------------------------- drawing helpers

_SUPERSAMPLE = 3


def _to_canvas(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) + CANVAS_MARGIN


def _coverage(polygons: list[np.ndarray], lines: list[tuple[np.ndarray, float]] | None = None,
              ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Anti-aliased coverage (0..1) of polygons and polylines, given in canvas pixels.

    Only the bounding box is drawn (supersampled), which keeps per-frame drawing cheap.
    """
    lines = lines or []
    pts = [p for p in polygons] + [p for p, _ in lines]
    if not pts:
        return None
    pad = 2 + max([w for _, w in lines], default=0.0)
    stacked = np.concatenate(pts)
    x0 = int(max(np.floor(stacked[:, 0].min() - pad), 0))
    y0 = int(max(np.floor(stacked[:, 1].min() - pad), 0))
    x1 = int(min(np.ceil(stacked[:, 0].max() + pad), CANVAS_SIZE))
    y1 = int(min(np.ceil(stacked[:, 1].max() + pad), CANVAS_SIZE))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    ss = _SUPERSAMPLE
    mask = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    draw = ImageDraw.Draw(mask)
    offset = np.array([x0, y0], dtype=np.float64)
    for poly in polygons:
        draw.polygon([tuple(p) for p in ((poly - offset) * ss)], fill=255)
    for line, width in lines:
        draw.line([tuple(p) for p in ((line - offset) * ss)], fill=255,
                  width=max(1, round(width * ss)), joint="curve")
    small = mask.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    return (slice(y0, y1), slice(x0, x1)), np.asarray(small, dtype=np.float32) / 255.0


def _paint(rgb: np.ndarray, cover: tuple[tuple[slice, slice], np.ndarray] | None,
           colour: np.ndarray | tuple[float, ...], alpha: float = 1.0) -> None:
    """Blend ``colour`` into ``rgb`` where ``cover`` says, in place."""
    if cover is None or alpha <= 0.0:
        return
    region, mask = cover
    weight = (mask * min(alpha, 1.0))[..., None]
    patch = rgb[region]
    patch += (np.asarray(colour, dtype=np.float32) - patch) * weight


def _band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Polygon between two curves sampled at the same x positions."""
    upper = np.stack([xs, top], axis=1)
    lower = np.stack([xs[::-1], bottom[::-1]], axis=1)
    return np.concatenate([upper, lower])


# ----------------------------------------------------------------------------- the renderer

@dataclass(frozen=True)
class Pose:
    """In-plane head pose relative to the aligned template (degrees, template units, factor)."""

    angle: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class Light:
    """A brightness gain and a linear gradient across the face (direction in radians)."""

    gain: float = 1.0
    gradient: float = 0.0
    direction: float = 0.0


class FaceRenderer:
    """Renders one identity; the identity's static appearance is computed once."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        base = _base_head()
        u, v = _template_grid()
        self._u, self._v = u, v
        rgb, person, hair = base.rgb, base.person, base.hair
        if identity.flip:
            rgb, person, hair = rgb[:, ::-1], person[:, ::-1], hair[:, ::-1]
        rgb, person, hair = self._reshape_face(rgb, person, hair)
        skin_gain = np.asarray(identity.skin_gain, dtype=np.float32)
        self.skin_rgb = (base.skin_rgb * skin_gain).astype(np.float32)
        self._tone = float(skin_gain.mean())
        self.landmarks = self._landmarks()
        coloured = rgb * skin_gain
        luminance = rgb.mean(axis=-1, keepdims=True) / 120.0
        hair_coloured = np.clip(luminance, 0.3, 1.8) * np.asarray(identity.hair_rgb, np.float32)
        rgb = coloured + (hair_coloured - coloured) * hair[..., None]
        self.rgb = rgb.astype(np.float32)
        self.alpha = person.astype(np.float32)
        self._add_neck_and_shirt()
        self._add_hair_style()
        if identity.beard > 0:
            self._add_beard()
        self._glasses = self._glasses_cover() if identity.glasses else None
        ramp = np.stack([u - 56.0, v - 56.0], axis=-1) / 60.0
        self._ramp = ramp.astype(np.float32)

    # -- static appearance ---------------------------------------------------------------

    def _displacement(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backward map of the face-shape warp: output (u, v) samples source (u+du, v+dv)."""
        ident = self.identity
        jaw = 1.0 / (1.0 + np.exp(-(v - 85.0) / 8.0))
        width = ident.face_width + ident.jaw_width * jaw
        du = (u - 56.0) * (1.0 / (1.0 + width) - 1.0)
        dv = (v - 52.0) * (1.0 / (1.0 + ident.face_length) - 1.0)
        eye_band = np.exp(-(((v - 51.6) / 9.0) ** 2)) * np.exp(-(((np.abs(u - 56.0) - 17.6)
                                                                   / 10.0) ** 2))
        du -= np.sign(u - 56.0) * ident.eye_gap * eye_band
        return du, dv

    def _reshape_face(self, rgb: np.ndarray, person: np.ndarray, hair: np.ndarray,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        du, dv = self._displacement(self._u, self._v)
        coords = [self._v + dv + CANVAS_MARGIN, self._u + du + CANVAS_MARGIN]
        warped = [ndimage.map_coordinates(rgb[..., c], coords, order=1, mode="nearest")
                  for c in range(3)]
        return (np.stack(warped, axis=-1),
                ndimage.map_coordinates(person, coords, order=1, mode="constant"),
                ndimage.map_coordinates(hair, coords, order=1, mode="constant"))

    def _forward(self, points: np.ndarray) -> np.ndarray:
        """Where template points land after the shape warp (fixed-point inversion)."""
        out = np.array(points, dtype=np.float64)
        for _ in range(12):
            du, dv = self._displacement(out[:, 0], out[:, 1])
            out = np.asarray(points) - np.stack([du, dv], axis=1)
        return out

    def _landmarks(self) -> dict[str, np.ndarray]:
        ident = self.identity
        eyes = ARCFACE_TEMPLATE[:2].copy()
        if ident.flip:
            eyes = np.array([111.0 - eyes[1, 0], eyes[1, 1]]), np.array([111.0 - eyes[0, 0],
                                                                        eyes[0, 1]])
            eyes = np.stack(eyes)
        mouth_half = 14.6 * ident.mouth_scale
        points = np.array([eyes[0], eyes[1], [56.0, 72.5], [56.0 - mouth_half, 92.0],
                           [56.0 + mouth_half, 92.0]])
        moved = self._forward(points)
        return {"eye_left": moved[0], "eye_right": moved[1], "nose": moved[2],
                "mouth_left": moved[3], "mouth_right": moved[4]}

    def _add_neck_and_shirt(self) -> None:
        chin = self._forward(np.array([[56.0, 112.0], [38.0, 100.0], [74.0, 100.0]]))
        neck_half = (chin[2, 0] - chin[1, 0]) * 0.42
        neck = _to_canvas(np.array([[56.0 - neck_half, chin[1, 1]], [56.0 + neck_half, chin[2, 1]],
                                    [56.0 + neck_half + 2, 150.0], [56.0 - neck_half - 2, 150.0]]))
        shirt = _to_canvas(np.array([[-40.0, 150.0], [10.0, 128.0], [56.0 - neck_half, 130.0],
                                     [56.0, 138.0], [56.0 + neck_half, 130.0], [102.0, 128.0],
                                     [152.0, 150.0], [152.0, 160.0], [-40.0, 160.0]]))
        behind = 1.0 - self.alpha[..., None]
        cover = _coverage([neck])
        if cover is not None:
            region, mask = cover
            shade = (self.skin_rgb * 0.82)
            weight = (mask[..., None] * behind[region])
            self.rgb[region] += (shade - self.rgb[region]) * weight
            self.alpha[region] = np.maximum(self.alpha[region], mask)
        cover = _coverage([shirt])
        if cover is not None:
            region, mask = cover
            shirt_colour = np.asarray(self.identity.shirt_rgb, dtype=np.float32)
            self.rgb[region] += (shirt_colour - self.rgb[region]) * mask[..., None]
            self.alpha[region] = np.maximum(self.alpha[region], mask)

    def _hair_texture(self, shape: tuple[int, int], seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        streaks = ndimage.gaussian_filter(rng.normal(0, 1, shape), (5.0, 1.2))
        return (1.0 + 0.15 * streaks / (streaks.std() + 1e-6))[..., None].astype(np.float32)

    def _add_hair_style(self) -> None:
        ident = self.identity
        style = ident.hair_style
        hair_colour = np.asarray(ident.hair_rgb, dtype=np.float32)
        texture = self._hair_texture((CANVAS_SIZE, CANVAS_SIZE), int(sum(ident.hair_rgb)))
        u, v = self._u, self._v
        if style == 1:  # bangs over the forehead
            xs = np.linspace(8.0, 104.0, 25)
            top = np.full_like(xs, -8.0)
            bottom = 24.0 + 6.0 * np.abs(np.sin(xs / 6.0)) - 10.0 * ((xs - 56.0) / 48.0) ** 4
            cover = _coverage([_to_canvas(_band(xs, top, bottom))])
            if cover is not None:
                region, mask = cover
                mask = mask * (self.alpha[region] > 0.5)
                self._blend_textured(region, mask, hair_colour, texture[region])
        elif style == 2:  # long hair falling beside the face
            outside = ~_ellipse(u, v, 56.0, 74.0, 38.0, 50.0)
            beside = (np.abs(u - 56.0) > 30.0) | (v < 90.0)
            long_hair = (_ellipse(u, v, 56.0, 60.0, 62.0, 95.0) & outside & beside
                         & (v > 5.0)).astype(np.float32)
            long_hair = ndimage.gaussian_filter(long_hair, 1.0)
            self.rgb += (hair_colour * texture - self.rgb) * long_hair[..., None]
            self.alpha = np.maximum(self.alpha, long_hair)
        elif style == 3:  # a cap hides the hair
            cap = _ellipse(u, v, 56.0, 12.0, 58.0, 34.0) & (v < 18.0 + 0.02 * (u - 56.0) ** 2 / 4)
            brim = _ellipse(u, v, 56.0, 19.0, 52.0, 5.0)
            hat = ndimage.gaussian_filter((cap | brim).astype(np.float32), 0.8)
            colour = np.asarray(ident.cap_rgb, dtype=np.float32)
            shade = np.clip(1.0 - 0.25 * (v - 5.0) / 30.0, 0.6, 1.1)[..., None]
            self.rgb += (colour * shade - self.rgb) * hat[..., None]
            self.alpha = np.maximum(self.alpha, hat)

    def _blend_textured(self, region: tuple[slice, slice], mask: np.ndarray,
                        colour: np.ndarray, texture: np.ndarray) -> None:
        self.rgb[region] += (colour * texture - self.rgb[region]) * mask[..., None]
        self.alpha[region] = np.maximum(self.alpha[region], mask)

    def _add_beard(self) -> None:
        u, v = self._u, self._v
        lower = (_ellipse(u, v, 56.0, 80.0, 44.0, 36.0) & (v > 80.0)).astype(np.float32)
        lower = ndimage.gaussian_filter(lower, 3.0) * self.alpha
        rng = np.random.default_rng(int(self.identity.beard * 1e6))
        grain = 0.75 + 0.5 * rng.random((CANVAS_SIZE, CANVAS_SIZE)).astype(np.float32)
        dark = np.asarray(self.identity.hair_rgb, dtype=np.float32) * 0.7
        weight = (lower * self.identity.beard * grain)[..., None].clip(0, 1)
        self.rgb += (dark - self.rgb) * weight

    def _glasses_cover(self) -> tuple[tuple[slice, slice], np.ndarray] | None:
        lines = []
        for eye in (self.landmarks["eye_left"], self.landmarks["eye_right"]):
            t = np.linspace(0, 2 * np.pi, 33)
            ring = np.stack([eye[0] + 11.0 * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.6,
                             eye[1] + 1.0 + 8.0 * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.6],
                            axis=1)
            lines.append((_to_canvas(ring), 1.8))
        left, right = self.landmarks["eye_left"], self.landmarks["eye_right"]
        bridge = np.array([[left[0] + 10.0, left[1] - 2.0], [56.0, left[1] - 4.0],
                           [right[0] - 10.0, right[1] - 2.0]])
        lines.append((_to_canvas(bridge), 1.6))
        lines.append((_to_canvas(np.array([[left[0] - 11.0, left[1] - 2.0],
                                           [left[0] - 22.0, left[1] - 3.0]])), 1.6))
        lines.append((_to_canvas(np.array([[right[0] + 11.0, right[1] - 2.0],
                                           [right[0] + 22.0, right[1] - 3.0]])), 1.6))
        return _coverage([], lines)

    # -- per frame -------------------------------------------------------------------------

    def render(self, cues: np.ndarray, pose: Pose = Pose(), light: Light = Light(),
               hidden: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One frame: RGB float32 [S, S, 3] (0..255) and alpha float32 [S, S] of the person.

        ``cues`` is a vector of ``NUM_CUES`` values in about -1..1 (see ``CUE_NAMES``);
        ``hidden`` ("hand" or "away") renders a frame in which no face can be found.
        """
        cues = np.asarray(cues, dtype=np.float64)
        rgb = self.rgb.copy()
        alpha = self.alpha.copy()
        self._draw_eyes(rgb, cues)
        self._draw_brows(rgb, cues)
        self._draw_wrinkles(rgb, cues)
        self._draw_mouth(rgb, cues)
        if self._glasses is not None:
            _paint(rgb, self._glasses, self.identity.glasses_rgb, 0.95)
        if hidden is not None:
            self._hide_face(rgb, alpha, hidden)
        rgb, alpha = _apply_pose(rgb, alpha, pose)
        direction = np.array([np.cos(light.direction), np.sin(light.direction)], np.float32)
        gain = light.gain * (1.0 + light.gradient * (self._ramp @ direction))
        rgb *= gain[..., None]
        return rgb, alpha

    def _draw_eyes(self, rgb: np.ndarray, cues: np.ndarray) -> None:
        openness = float(cues[EYE_OPEN])
        half_w, half_h = 7.0, 3.3
        xs_unit = np.linspace(-1.0, 1.0, 15)
        arc = np.sqrt(np.clip(1.0 - xs_unit ** 2, 0.0, 1.0)) ** 0.8
        lid_colour = self.skin_rgb * 0.93
        for eye in (self.landmarks["eye_left"], self.landmarks["eye_right"]):
            xs = eye[0] + xs_unit * (half_w + 1.0)
            top = eye[1] - half_h * arc
            bottom = eye[1] + half_h * 0.8 * arc
            if openness < 0:  # squint: lids cover part of the eye
                closing = -openness
                lid_edge = top + (2.0 * half_h) * 0.65 * closing * arc
                _paint(rgb, _coverage([_to_canvas(_band(xs, top - 2.5, lid_edge))]), lid_colour)
                _paint(rgb, _coverage([], [(_to_canvas(np.stack([xs, lid_edge], 1)), 1.2)]),
                       self.skin_rgb * 0.35, 0.8)
                lower_edge = bottom - (2.0 * half_h) * 0.35 * closing * arc
                _paint(rgb, _coverage([_to_canvas(_band(xs, lower_edge, bottom + 1.5))]),
                       lid_colour)
            else:  # wide: sclera shows above and below the iris, lid line moves up
                raise_by = 3.8 * openness * arc
                sclera = np.array([228.0, 226.0, 220.0]) * (0.55 + 0.45 * self._tone)
                _paint(rgb, _coverage([_to_canvas(_band(xs, top - raise_by, top + 0.8))]),
                       sclera, 0.9)
                _paint(rgb, _coverage([], [(_to_canvas(np.stack([xs, top - raise_by], 1)),
                                            1.3)]), self.skin_rgb * 0.3, 0.9)
                drop = 1.2 * openness * arc
                _paint(rgb, _coverage([_to_canvas(_band(xs, bottom - 0.5, bottom + drop))]),
                       sclera, 0.7)

    def _draw_brows(self, rgb: np.ndarray, cues: np.ndarray) -> None:
        thickness = self.identity.brow_thickness
        t = np.linspace(0.0, 1.0, 12)
        for side, eye in ((-1.0, self.landmarks["eye_left"]), (1.0, self.landmarks["eye_right"])):
            xs = eye[0] + side * (-7.5 + 20.0 * t)
            base = eye[1] - 10.5 - 1.8 * np.sin(np.pi * t)
            lift = 7.0 * cues[BROW_RAISE] + 6.0 * cues[BROW_INNER] * (1.0 - t) ** 1.3
            if side < 0:
                lift = lift + 5.0 * cues[BROW_ASYM]
            centre = base - lift
            half = 0.5 * thickness * (1.1 - 0.5 * t)
            order = np.argsort(xs)
            poly = _band(xs[order], (centre - half)[order], (centre + half)[order])
            _paint(rgb, _coverage([_to_canvas(poly)]), self.identity.brow_rgb, 0.92)

    def _draw_wrinkles(self, rgb: np.ndarray, cues: np.ndarray) -> None:
        crease = self.skin_rgb * 0.62
        raise_amount = float(cues[BROW_RAISE])
        if raise_amount > 0.15:
            lines = []
            for k, height in enumerate((19.0, 24.0, 29.0)):
                xs = np.linspace(36.0 - 3 * k, 76.0 + 3 * k, 9)
                ys = height - 1.5 * np.sin(np.pi * (xs - xs[0]) / (xs[-1] - xs[0]))
                lines.append((_to_canvas(np.stack([xs, ys], 1)), 1.0))
            _paint(rgb, _coverage([], lines), crease, 0.7 * (raise_amount - 0.15))
        frown = max(-float(cues[BROW_INNER]), -raise_amount, 0.0)
        if frown > 0.15:
            lines = [(_to_canvas(np.array([[x, 36.0], [x + 0.8 * np.sign(x - 56), 47.0]])), 1.1)
                     for x in (52.5, 59.5)]
            _paint(rgb, _coverage([], lines), crease, 0.9 * (frown - 0.15))
        wrinkle = float(cues[NOSE_WRINKLE])
        if wrinkle > 0.1:
            lines = [(_to_canvas(np.array([[49.0, y + 1.0], [56.0, y], [63.0, y + 1.0]])), 1.0)
                     for y in (55.0, 58.5, 62.0)]
            nose = self.landmarks["nose"]
            lines += [(_to_canvas(np.array([[nose[0] + s * 7, nose[1] - 2], [nose[0] + s * 10,
                                                                           nose[1] + 6],
                                            [nose[0] + s * 13, nose[1] + 13]])), 1.3)
                      for s in (-1.0, 1.0)]
            _paint(rgb, _coverage([], lines), crease, 1.0 * (wrinkle - 0.1))

    def _draw_mouth(self, rgb: np.ndarray, cues: np.ndarray) -> None:
        left, right = self.landmarks["mouth_left"], self.landmarks["mouth_right"]
        curve, opening, width = cues[MOUTH_CURVE], max(cues[MOUTH_OPEN], 0.0), cues[MOUTH_WIDTH]
        centre = (left + right) / 2.0
        half_w = (right[0] - left[0]) / 2.0 * (1.0 + 0.28 * width + 0.08 * max(curve, 0.0))
        s = np.linspace(-1.0, 1.0, 29)
        xs = centre[0] + s * half_w
        side_lift = np.where(s < 0, cues[MOUTH_ASYM], -cues[MOUTH_ASYM]).clip(0, None)
        mid = centre[1] + 1.0 - (7.0 * curve + 6.0 * side_lift) * s ** 2
        profile = np.clip(1.0 - s ** 2, 0.0, 1.0)
        gap = 15.0 * opening * profile ** 0.8
        press = 1.0 + 0.45 * min(width, 0.0)
        upper_thick = 2.6 * press * profile ** 0.5 * (1.0 - 0.25 * max(width, 0.0))
        lower_thick = 3.4 * press * profile ** 0.6
        cupid = 0.7 * np.exp(-((s / 0.15) ** 2))
        upper_edge = mid - 0.3 * gap
        lower_edge = mid + 0.7 * gap
        if opening > 0.05:
            _paint(rgb, _coverage([_to_canvas(_band(xs, upper_edge, lower_edge + 0.3))]),
                   (55.0, 18.0, 22.0))
            teeth_depth = np.minimum(2.8, (lower_edge - upper_edge) * 0.45)
            teeth = np.abs(s) < 0.75
            if teeth.sum() > 2:
                _paint(rgb, _coverage([_to_canvas(_band(xs[teeth], upper_edge[teeth],
                                                        (upper_edge + teeth_depth)[teeth]))]),
                       (232.0, 226.0, 214.0), 0.95)
        lip = self.identity.lip_rgb
        _paint(rgb, _coverage([_to_canvas(_band(xs, upper_edge - upper_thick + cupid,
                                                upper_edge + 0.2))]), lip, 0.9)
        _paint(rgb, _coverage([_to_canvas(_band(xs, lower_edge - 0.2, lower_edge + lower_thick))]),
               lip, 0.9)
        line = np.stack([xs, np.where(opening > 0.05, upper_edge, mid)], axis=1)
        _paint(rgb, _coverage([], [(_to_canvas(line), 1.0)]), (70.0, 30.0, 30.0), 0.7)

    def _hide_face(self, rgb: np.ndarray, alpha: np.ndarray, how: str) -> None:
        u, v = self._u, self._v
        if how == "hand":
            palm = _ellipse(u, v, 56.0, 70.0, 40.0, 46.0)
            fingers = np.zeros_like(palm)
            for k in range(4):
                fingers |= _ellipse(u, v, 26.0 + 20.0 * k, 24.0, 8.0, 26.0)
            hand = ndimage.gaussian_filter((palm | fingers).astype(np.float32), 1.0)
            shade = (self.skin_rgb * (0.9 + 0.15 * (v - 40.0) / 80.0)[..., None]).astype(
                np.float32)
            rgb += (shade - rgb) * hand[..., None]
            np.maximum(alpha, hand, out=alpha)
        elif how == "away":
            head = ndimage.gaussian_filter(_ellipse(u, v, 56.0, 55.0, 50.0, 64.0).astype(
                np.float32), 1.0)
            colour = np.asarray(self.identity.hair_rgb, dtype=np.float32)
            texture = self._hair_texture((CANVAS_SIZE, CANVAS_SIZE), 7)
            rgb += (colour * texture - rgb) * head[..., None]
            np.maximum(alpha, head, out=alpha)
        else:
            raise ValueError(f"unknown hidden mode {how!r}; expected 'hand' or 'away'")


def _apply_pose(rgb: np.ndarray, alpha: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Rotate/scale about the template centre and shift, with PIL's fast bilinear affine."""
    if pose == Pose():
        return rgb, alpha
    centre = CANVAS_MARGIN + 56.0
    theta = np.deg2rad(pose.angle)
    cos, sin = np.cos(theta) / pose.scale, np.sin(theta) / pose.scale
    # PIL maps output (x, y) to input (a x + b y + c, d x + e y + f).
    cx, cy = centre + pose.dx, centre + pose.dy
    a, b, d, e = cos, sin, -sin, cos
    c = centre - a * cx - b * cy
    f = centre - d * cx - e * cy
    rgba = np.concatenate([np.clip(rgb, 0, 255), alpha[..., None] * 255.0], axis=-1)
    image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    moved = image.transform(image.size, Image.Transform.AFFINE, (a, b, c, d, e, f),
                            resample=Image.Resampling.BILINEAR)
    out = np.asarray(moved, dtype=np.float32)
    return out[..., :3].copy(), out[..., 3] / 255.0


def centre_crop(canvas: np.ndarray) -> np.ndarray:
    """The aligned 112x112 face inside a rendered canvas."""
    m = CANVAS_MARGIN
    return canvas[m:m + FACE_SIZE, m:m + FACE_SIZE]
