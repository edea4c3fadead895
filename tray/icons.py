"""The tray icon for each state, drawn with Pillow (no image files to ship).

A monitor in a rounded square: grey when idle, blue in a session, amber while the
screen is viewed, red with a hand while controlled (unmistakable), violet with a
question mark while a prompt waits for an answer.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from tray.model import State

SIZE = 64
COLOURS = {
    State.IDLE: (110, 118, 129),
    State.SESSION: (31, 111, 235),
    State.VIEWED: (212, 140, 0),
    State.CONTROLLED: (207, 34, 46),
    State.PROMPT: (130, 80, 223),
}


def draw(state: State, size: int = SIZE) -> Image.Image:
    """The icon for ``state`` as an RGBA image of ``size`` x ``size`` pixels."""
    s = size / 64
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(image)
    colour = COLOURS[state]
    d.rounded_rectangle((0, 0, size - 1, size - 1), radius=int(14 * s), fill=colour)
    white = (255, 255, 255, 255)
    d.rounded_rectangle(
        (10 * s, 12 * s, 54 * s, 42 * s), radius=int(4 * s), outline=white, width=max(1, int(4 * s))
    )
    d.line((32 * s, 42 * s, 32 * s, 50 * s), fill=white, width=max(1, int(4 * s)))
    d.line((20 * s, 52 * s, 44 * s, 52 * s), fill=white, width=max(1, int(4 * s)))
    if state is State.VIEWED:  # an eye
        d.ellipse((20 * s, 20 * s, 44 * s, 34 * s), outline=white, width=max(1, int(3 * s)))
        d.ellipse((28 * s, 23 * s, 36 * s, 31 * s), fill=white)
    elif state is State.CONTROLLED:  # a pointer arrow, filled
        d.polygon(
            [
                (24 * s, 16 * s),
                (24 * s, 38 * s),
                (30 * s, 32 * s),
                (36 * s, 40 * s),
                (40 * s, 37 * s),
                (34 * s, 30 * s),
                (42 * s, 29 * s),
            ],
            fill=white,
        )
    elif state is State.PROMPT:  # a question mark
        d.arc(
            (25 * s, 16 * s, 39 * s, 28 * s),
            start=180,
            end=90,
            fill=white,
            width=max(1, int(3 * s)),
        )
        d.line((32 * s, 28 * s, 32 * s, 32 * s), fill=white, width=max(1, int(3 * s)))
        d.ellipse((30 * s, 35 * s, 34 * s, 39 * s), fill=white)
    elif state is State.SESSION:  # a dot: connected
        d.ellipse((27 * s, 22 * s, 37 * s, 32 * s), fill=white)
    return image
