"""Small services every package uses: one-line user errors (``errors``), name -> builder
registries with close-name suggestions (``registry``), device name and versions
(``environment``)."""
