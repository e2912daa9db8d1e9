// The page's start: the form, the jobs (polled for new ones, followed live when active).

import { onKeyChange } from "./common.js";
import { closeStreams } from "./events.js";
import { addObjective, loadCatalog, loadServerDefaults } from "./form.js";
import { loadJobs } from "./jobs.js";

onKeyChange(() => { closeStreams(); loadCatalog(); loadJobs(); });
addObjective({ property: "band_gap", goal: "target", value: 1.5, tolerance: 0.5 });
addObjective({ property: "formation_energy", goal: "below", value: -0.5 });
loadServerDefaults();
loadCatalog();
loadJobs();
setInterval(() => loadJobs(), 5000);
