"""Stage-1 decisions as plain functions, usable without Beam: text rules, image rules, their config."""
