"""The scene simulator and its local STAC service.

- `config.SceneConfig`: what to simulate; `scene.simulate(config, out)`: write a scene.
- `server.serve_scene(scene)`: a real STAC API (rustac) over it on loopback.
- Physics: `terrain`, `vegetation`, `landslides`, `soil` (the landscape and the event),
  `radar` (Sentinel-1 RTC) and `optical` (Sentinel-2 L2A).
"""
