"""The Docker backend family: the backend (``backend``), the engine client and box labels on
containers (``engine``), the run-time image check (``image_check``), the image build tooling
(``image_build``), the reaper of orphaned boxes (``reaper``) and ``doctor``.

Nothing is imported here, so the reaper or the image builder never load the backend.
"""
