"""From a tag or digest to this platform's image manifest: an index is narrowed to the
entry for the agent's os/architecture/variant, then that manifest is fetched by digest."""

from __future__ import annotations

from tessera.agent.images.errors import PLATFORM, UNSUPPORTED, PullFailed
from tessera.agent.images.manifests import Manifest, entry_descriptor
from tessera.agent.images.platforms import Platform, offered_platforms, select_manifest
from tessera.agent.images.registry import Repository


async def resolve_manifest(
    repository: Repository, target: str, platform: Platform, image: str
) -> Manifest:
    manifest = await repository.manifest(target)
    if not manifest.is_index:
        return manifest
    entry = select_manifest(manifest.entries, platform)
    if entry is None:
        offered = ", ".join(offered_platforms(manifest.entries)) or "none"
        raise PullFailed(
            PLATFORM,
            f"cannot pull {image}: no manifest for {platform} in the index (it has {offered})",
        )
    chosen = await repository.manifest(entry_descriptor(entry, image).digest)
    if chosen.is_index:
        raise PullFailed(UNSUPPORTED, f"cannot pull {image}: nested indexes are not supported")
    return chosen
