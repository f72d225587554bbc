"""Matplotlib figures drawn off-screen (Agg, without pyplot's global backend) and saved atomically."""
import os

from utils.fileio import atomic_write


def new_figure(width, height, dpi=100):
    """A matplotlib Figure of width x height inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, png_path):
    """Write `fig` as a PNG to `png_path` (folders made; a crash never leaves half a file)."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
