"""Container images as the exec fallback needs them: references, a registry client, flattened
layers, and the in-container listing compared against them.

The node agent reads a container's overlay upperdir and so sees its drift directly. Without the
agent, the only independent account of what *should* be in the container is the image itself,
pulled by digest from its registry; an exec listing of what *is* there is then compared with it
(``assurance: low``, since the container answers for itself).

Nothing here imports ``kubernetes``: callers give pod fields and exec output as plain data.
"""
