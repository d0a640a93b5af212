"""Container images: references, registry client, blob and layer store, unpacking, building."""
