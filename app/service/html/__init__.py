"""What every page of the service is written with: the Jinja environment, its filters and templates
(env), and the charts' geometry (chart). Below the UI and the fleet, which both draw with it."""
