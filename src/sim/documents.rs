//! The knowledge corpus, deterministic for a seed: standard operating procedures (per plant ×
//! machine type × failure mode, and per warehouse process), incident reports written from the
//! injected faults of the history window, and sales proposals per customer — with the questions
//! each one answers (the ground truth `eval search` scores against).
//!
//! Documents are written the way the real ones read: several paragraphs in the register of their
//! author (an engineer's procedure, a technician's report, a salesperson's offer), while the
//! questions are asked in the words of someone who has the problem. The two share entities
//! (machine, plant, customer) but rarely the describing words, so keyword search alone and
//! vector search alone each miss some of them.

use chrono::{DateTime, Duration, Utc};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::faults::{Fault, FaultKind, FaultPlan, FaultRates};
use super::reference::{self, ReferenceData};
use crate::config::SimulateConfig;
use crate::model::events::SensorType;

/// Days of history before `simulate.start` that incident reports are written for.
pub const HISTORY_DAYS: i64 = 21;

/// One document of `knowledge.sops`, `knowledge.incidents` or `knowledge.proposals` (one row
/// layout for all three; the columns that do not apply are NULL).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Document {
    pub doc_id: String,
    /// sop | incident | proposal
    pub kind: String,
    pub title: String,
    pub body: String,
    pub plant_id: Option<String>,
    pub warehouse_id: Option<String>,
    pub region: Option<String>,
    pub customer_id: Option<String>,
    pub account_manager: Option<String>,
    pub machine_id: Option<String>,
    pub machine_type: Option<String>,
    pub sensor_type: Option<String>,
    pub part_id: Option<String>,
    pub supplier_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A question and the documents that answer it.
#[derive(Debug, Clone, Serialize)]
pub struct Question {
    pub query: String,
    /// sop | incident | proposal: the kind of document that answers.
    pub kind: String,
    pub answers: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub sops: Vec<Document>,
    pub incidents: Vec<Document>,
    pub proposals: Vec<Document>,
    pub questions: Vec<Question>,
}

impl Corpus {
    /// The rows of one document table.
    pub fn table(&self, name: &str) -> Option<&[Document]> {
        match name {
            "knowledge.sops" => Some(&self.sops),
            "knowledge.incidents" => Some(&self.incidents),
            "knowledge.proposals" => Some(&self.proposals),
            _ => None,
        }
    }
}

/// Machine types, by machine index (`M-001` is index 0).
pub const MACHINE_TYPES: [&str; 5] = [
    "CNC milling centre",
    "hydraulic press",
    "injection moulding machine",
    "screw compressor",
    "belt conveyor",
];

/// Words a machine's operator uses for it.
const MACHINE_LAY: [&str; 5] = [
    "the mill",
    "the press",
    "the moulding machine",
    "the air compressor",
    "the conveyor line",
];

pub fn machine_type(machine: usize) -> &'static str {
    MACHINE_TYPES[machine % MACHINE_TYPES.len()]
}

/// How a failure mode is named in engineering documents, and how someone who sees it asks.
struct Failure {
    sensor: SensorType,
    kind: FaultKind,
    title: &'static str,
    technical: &'static str,
    cause: &'static str,
    steps: [&'static str; 4],
    lay: [&'static str; 3],
}

const FAILURES: [Failure; 16] = [
    Failure {
        sensor: SensorType::Temperature,
        kind: FaultKind::Spike,
        title: "Transient thermal excursion",
        technical: "a short-lived excursion of the bearing-housing temperature of more than six standard deviations above baseline",
        cause: "coolant flow interruption or a momentary overload of the spindle drive",
        steps: [
            "Confirm the excursion on the redundant thermocouple before acting on it",
            "Inspect the coolant circuit for air locks and verify the pump delivery pressure",
            "Review the drive current log for an overload coinciding with the event",
            "Return to production once three consecutive readings sit inside the control band",
        ],
        lay: [
            "it suddenly got really hot for a minute and then calmed down",
            "a brief heat burst showed up on the readout",
            "the temperature jumped for a moment out of nowhere",
        ],
    },
    Failure {
        sensor: SensorType::Temperature,
        kind: FaultKind::Drift,
        title: "Progressive thermal drift",
        technical: "a gradual upward drift of operating temperature over several hours",
        cause: "fouled heat exchanger fins, degraded lubricant or a failing cooling fan",
        steps: [
            "Trend the last eight hours against the seasonal baseline for this asset",
            "Clean the heat exchanger and check the cooling fan for speed and vibration",
            "Sample the lubricant and replace it if viscosity is out of specification",
            "Schedule a thermographic survey within the next maintenance window",
        ],
        lay: [
            "it keeps running warmer and warmer all shift",
            "heat has been creeping up slowly since this morning",
            "it gets hotter every hour and never cools back down",
        ],
    },
    Failure {
        sensor: SensorType::Temperature,
        kind: FaultKind::Stuck,
        title: "Frozen temperature signal",
        technical: "a temperature channel reporting an unchanging value (flat-lined signal)",
        cause: "a seized transmitter, a broken thermocouple junction or a stalled data acquisition card",
        steps: [
            "Compare the channel against a handheld infrared reading at the measuring point",
            "Check the transmitter loop current and the junction box for moisture",
            "Restart the acquisition card and confirm the channel updates",
            "Tag the asset as running on degraded instrumentation until the sensor is replaced",
        ],
        lay: [
            "the heat reading shows the exact same number for ages",
            "the thermometer on the screen is not moving at all",
            "the temperature value seems frozen",
        ],
    },
    Failure {
        sensor: SensorType::Temperature,
        kind: FaultKind::OutOfRange,
        title: "Over-temperature beyond the operating envelope",
        technical: "operating temperature above the 90 °C limit of the safe operating envelope",
        cause: "sustained overload, blocked ventilation or a failed cooling circuit",
        steps: [
            "Stop the asset in a controlled manner; do not restart above the limit",
            "Lock out the drive and let the housing cool below 50 °C before inspection",
            "Inspect ventilation openings, cooling circuit and drive load settings",
            "Record the event for the reliability engineer and request sign-off before restart",
        ],
        lay: [
            "it is way too hot, past the red zone",
            "the machine is overheating badly and the alarm is on",
            "it is cooking, much hotter than it is ever allowed to be",
        ],
    },
    Failure {
        sensor: SensorType::Vibration,
        kind: FaultKind::Spike,
        title: "Impact vibration event",
        technical: "a transient vibration velocity excursion typical of a mechanical impact",
        cause: "a loose fixture, a tool strike or debris passing through a rotating assembly",
        steps: [
            "Inspect fixtures, clamps and tooling for looseness or damage",
            "Check the rotating assembly for debris and foreign objects",
            "Verify mounting bolt torque against the machine's torque table",
            "Log the event and watch the next shift's vibration trend for recurrence",
        ],
        lay: [
            "there was a loud bang and the whole thing shook once",
            "it jolted hard for a second",
            "a sudden shudder went through the machine",
        ],
    },
    Failure {
        sensor: SensorType::Vibration,
        kind: FaultKind::Drift,
        title: "Rising vibration trend (bearing wear)",
        technical: "a progressive increase of RMS vibration velocity over hours, the signature of rolling-element bearing wear",
        cause: "bearing wear, misalignment after maintenance, or imbalance from material build-up",
        steps: [
            "Take an envelope spectrum to confirm bearing defect frequencies",
            "Check shaft alignment and coupling condition",
            "Grease the bearings per the lubrication chart and re-measure after one hour",
            "Plan a bearing replacement if the trend continues past the alert threshold",
        ],
        lay: [
            "it has been getting shakier and noisier over the last few hours",
            "the rumbling keeps getting worse as the day goes on",
            "more and more wobble every hour",
        ],
    },
    Failure {
        sensor: SensorType::Vibration,
        kind: FaultKind::Stuck,
        title: "Frozen vibration channel",
        technical: "an accelerometer channel reporting a constant value",
        cause: "a detached accelerometer, a damaged cable or a saturated charge amplifier",
        steps: [
            "Check the accelerometer mounting (stud or magnet) and the cable run",
            "Tap-test the sensor and confirm the channel responds",
            "Replace the cable or sensor if the channel stays flat",
            "Until then, inspect the asset by hand on every round",
        ],
        lay: [
            "the shake reading never changes, same value all day",
            "the vibration number looks stuck",
            "the wobble gauge is not updating",
        ],
    },
    Failure {
        sensor: SensorType::Vibration,
        kind: FaultKind::OutOfRange,
        title: "Vibration above the alarm limit",
        technical: "vibration velocity above the 8 mm/s alarm limit of the operating envelope",
        cause: "severe imbalance, a broken bearing cage or structural looseness",
        steps: [
            "Stop the asset immediately; severe vibration damages spindles and foundations",
            "Inspect the bearings, the rotor and the baseframe for cracks and looseness",
            "Balance the rotor or replace failed bearings before restarting",
            "Run an acceptance measurement and file it with the maintenance order",
        ],
        lay: [
            "it is shaking violently, far past the limit",
            "the machine is rattling so hard the floor moves",
            "the shaking is off the charts",
        ],
    },
    Failure {
        sensor: SensorType::Pressure,
        kind: FaultKind::Spike,
        title: "Pressure surge",
        technical: "a transient hydraulic pressure surge (water hammer)",
        cause: "a valve closing too fast or a relief valve sticking",
        steps: [
            "Check the valve closing times against the hydraulic schematic",
            "Test the relief valve setting and its response",
            "Inspect hoses and fittings downstream of the surge for damage",
            "Add an accumulator check to the next preventive maintenance",
        ],
        lay: [
            "the pressure kicked up hard for an instant",
            "we heard a knock in the lines and the gauge jumped",
            "a sudden pressure punch, then back to normal",
        ],
    },
    Failure {
        sensor: SensorType::Pressure,
        kind: FaultKind::Drift,
        title: "Gradual pressure decay",
        technical: "a slow drift of system pressure away from its setpoint over hours",
        cause: "internal leakage past worn seals, a clogging filter or a tiring pump",
        steps: [
            "Isolate circuits one at a time to locate the leak",
            "Check the filter differential pressure indicator and replace the element",
            "Measure pump case drain flow to assess pump wear",
            "Replace worn seals and verify the pressure holds for thirty minutes",
        ],
        lay: [
            "the pressure keeps sliding away little by little",
            "pressure has been drifting off slowly all day",
            "it loses a bit more pressure every hour",
        ],
    },
    Failure {
        sensor: SensorType::Pressure,
        kind: FaultKind::Stuck,
        title: "Frozen pressure transmitter",
        technical: "a pressure transmitter reporting an unchanging value",
        cause: "a blocked impulse line, a failed transmitter or a frozen acquisition channel",
        steps: [
            "Vent and flush the impulse line",
            "Compare with the local mechanical gauge",
            "Replace the transmitter if it does not follow the local gauge",
            "Recalibrate the loop and document the as-found and as-left values",
        ],
        lay: [
            "the pressure display is stuck on one number",
            "the gauge on screen does not move anymore",
            "pressure shows exactly the same value hour after hour",
        ],
    },
    Failure {
        sensor: SensorType::Pressure,
        kind: FaultKind::OutOfRange,
        title: "Over-pressure beyond the operating envelope",
        technical: "system pressure above the 9 bar limit of the operating envelope",
        cause: "a blocked return line, a failed relief valve or a wrong regulator setting",
        steps: [
            "Depressurise the system following the lock-out procedure",
            "Check the relief valve and the regulator setting",
            "Inspect the return line for blockage",
            "Pressure-test at the nominal setting before returning to service",
        ],
        lay: [
            "the pressure is way too high and the alarm keeps going",
            "the gauge is in the red, far above normal",
            "way too much pressure in the system",
        ],
    },
    Failure {
        sensor: SensorType::Power,
        kind: FaultKind::Spike,
        title: "Inrush power spike",
        technical: "a transient spike of drive power consumption",
        cause: "a jam in the material flow or an inrush current at restart",
        steps: [
            "Check the material flow path for jams and clear it under lock-out",
            "Review the drive's soft-start settings",
            "Check the motor terminals for loose connections",
            "Watch the next starts for recurrence",
        ],
        lay: [
            "it suddenly pulled a lot of power for a moment",
            "the power meter shot up briefly",
            "an electricity burst, then back to normal",
        ],
    },
    Failure {
        sensor: SensorType::Power,
        kind: FaultKind::Drift,
        title: "Creeping power consumption",
        technical: "a gradual rise in drive power draw at constant output",
        cause: "rising friction from wear, poor lubrication or a dragging brake",
        steps: [
            "Compare power per unit produced with last week's figure",
            "Check gearboxes and bearings for friction and lubricate per the chart",
            "Check the motor brake for drag",
            "Plan an energy audit of the asset if the trend persists",
        ],
        lay: [
            "it uses more electricity every hour for the same work",
            "the energy bill of this machine keeps climbing through the day",
            "power use slowly going up although output is the same",
        ],
    },
    Failure {
        sensor: SensorType::Power,
        kind: FaultKind::Stuck,
        title: "Frozen power meter",
        technical: "a power meter channel reporting a constant value",
        cause: "a failed current transformer, a meter fault or a communication timeout",
        steps: [
            "Check the meter's communication status and restart the gateway",
            "Measure the phase currents with a clamp meter",
            "Replace the current transformer if readings disagree",
            "Backfill the energy report from the upstream meter",
        ],
        lay: [
            "the power reading has not changed at all today",
            "the electricity meter is stuck",
            "kW value frozen on the display",
        ],
    },
    Failure {
        sensor: SensorType::Power,
        kind: FaultKind::OutOfRange,
        title: "Drive overload",
        technical: "drive power above the 50 kW limit of the operating envelope",
        cause: "mechanical overload, a seized component or a short in the motor winding",
        steps: [
            "Stop the drive and lock it out",
            "Check for a seized component by turning the drivetrain by hand",
            "Megger-test the motor winding",
            "Restart under supervision with the current logged",
        ],
        lay: [
            "it is drawing far too much power and tripping",
            "the motor is overloaded, power way past the limit",
            "the machine pulls crazy amounts of electricity",
        ],
    },
];

/// The index in [`FAILURES`] of a sensor type's fault kind.
fn failure_index(sensor: SensorType, kind: FaultKind) -> usize {
    FAILURES
        .iter()
        .position(|f| f.sensor == sensor && f.kind == kind)
        .expect("every sensor type × fault kind has a failure mode")
}

/// Warehouse processes that have an SOP in every warehouse: title, body paragraphs, questions.
const PROCESSES: [(&str, &str, [&str; 3]); 6] = [
    (
        "Goods receipt and put-away",
        "Inbound deliveries are checked against the advance shipping notice before unloading. Count every handling unit, inspect packaging for damage and record discrepancies on the receipt before the driver leaves. Put-away follows the slotting plan; fast movers go to the pick face, overstock to reserve locations.",
        [
            "a truck just arrived, what do we do before unloading",
            "how do I book in a delivery that came today",
            "where do new pallets go once they are off the lorry",
        ],
    ),
    (
        "Cycle counting",
        "Locations are counted on a rolling schedule: A-class parts monthly, B-class quarterly, C-class twice a year. A variance above two percent or fifty units triggers a recount by a second counter before any adjustment is posted. Adjustments above the threshold need the inventory controller's approval.",
        [
            "the system says we have parts the shelf doesn't",
            "how often should we count the shelves",
            "the stock numbers don't match what is physically there",
        ],
    ),
    (
        "Stockout escalation",
        "When projected days of cover fall below the supplier's lead time, the planner raises an expedite request with the supplier and checks transfer options from sister warehouses. If cover drops below three days, the production scheduler is informed so that affected orders can be re-sequenced.",
        [
            "we're about to run out of a part, who do I tell",
            "what happens when a part is nearly gone",
            "the shelf will be empty before the next truck comes",
        ],
    ),
    (
        "Expedited purchase orders",
        "Rush and expedited orders carry a surcharge and need a justification referencing the shortage signal. The buyer confirms the supplier's capacity by phone before placing the order and tracks the shipment daily until receipt.",
        [
            "can we get parts faster than normal and what does it cost",
            "how do I order something urgently",
            "the normal delivery time is too slow, what are the options",
        ],
    ),
    (
        "Damaged inbound deliveries",
        "Damaged goods are photographed, quarantined in the blocked-stock area and reported to the carrier within 24 hours. The supplier is notified with the photos and the delivery note; replacement or credit is agreed before the goods are returned.",
        [
            "boxes came in crushed, what now",
            "half of the delivery is broken",
            "the pallet arrived smashed, who pays",
        ],
    ),
    (
        "Customer returns",
        "Returned goods need a return authorisation number. On arrival they are inspected, graded as resaleable, repairable or scrap, and the customer's account is credited once the grade is confirmed.",
        [
            "a customer sent stuff back, how do we handle it",
            "what do I do with returned goods",
            "how do we give money back for returned parts",
        ],
    ),
];

/// Product lines proposals are written for (matching the parts' categories).
const PRODUCT_LINES: [(&str, &str, &str); 6] = [
    (
        "bearings",
        "precision bearing programme",
        "spinning parts that wear out",
    ),
    (
        "fasteners",
        "fastener kanban supply",
        "screws and bolts running low all the time",
    ),
    (
        "electronics",
        "control electronics bundle",
        "circuit boards and sensors",
    ),
    (
        "hydraulics",
        "hydraulic components framework",
        "pumps, valves and hoses",
    ),
    ("castings", "machined castings contract", "metal housings"),
    (
        "packaging",
        "returnable packaging service",
        "boxes and crates",
    ),
];

/// The whole corpus for `cfg`, about the world of `data` (`reference::generate(cfg)`).
pub fn generate(cfg: &SimulateConfig, data: &ReferenceData) -> Corpus {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xd0c5_0000_0000_0017);
    let mut corpus = Corpus::default();
    let machines = cfg.devices.div_ceil(SensorType::ALL.len());
    sops(cfg, machines, &mut rng, &mut corpus);
    incidents(cfg, &mut rng, &mut corpus);
    proposals(cfg, data, &mut rng, &mut corpus);
    corpus
}

fn blank(doc_id: String, kind: &str, title: String, body: String, at: DateTime<Utc>) -> Document {
    Document {
        doc_id,
        kind: kind.to_string(),
        title,
        body,
        plant_id: None,
        warehouse_id: None,
        region: None,
        customer_id: None,
        account_manager: None,
        machine_id: None,
        machine_type: None,
        sensor_type: None,
        part_id: None,
        supplier_id: None,
        created_at: at,
        updated_at: at,
    }
}

fn sops(cfg: &SimulateConfig, machines: usize, rng: &mut ChaCha8Rng, corpus: &mut Corpus) {
    let plants = (0..machines.min(3))
        .map(reference::plant_id)
        .collect::<Vec<_>>();
    let issued = cfg.start - Duration::days(400);
    for plant in &plants {
        for (t, mtype) in MACHINE_TYPES.iter().enumerate() {
            for f in &FAILURES {
                let doc_id = format!(
                    "SOP-{plant}-{}-{}-{}",
                    t + 1,
                    f.sensor.as_str(),
                    f.kind.as_str()
                );
                let revision = rng.random_range(1..6);
                let title = format!("{} on the {mtype} ({plant})", f.title);
                let body = format!(
                    "Standard operating procedure {doc_id}, revision {revision}. Scope: every \
                     {mtype} at {plant}. This procedure applies when condition monitoring reports \
                     {technical} on the {sensor} channel of a {mtype}.\n\n\
                     Probable causes: {cause}. The {sensor} signal of the asset is the primary \
                     indicator; corroborate it with the neighbouring channels before intervening.\n\n\
                     Procedure:\n1. {s0}.\n2. {s1}.\n3. {s2}.\n4. {s3}.\n\n\
                     Safety: apply lock-out/tag-out before opening guards of the {mtype}. \
                     Escalate to the {plant} reliability engineer if the condition returns within \
                     48 hours of the intervention.",
                    technical = f.technical,
                    sensor = f.sensor.as_str(),
                    cause = f.cause,
                    s0 = f.steps[0],
                    s1 = f.steps[1],
                    s2 = f.steps[2],
                    s3 = f.steps[3],
                );
                let at = issued + Duration::days(rng.random_range(0..300));
                let mut d = blank(doc_id.clone(), "sop", title, body, at);
                d.plant_id = Some(plant.clone());
                d.machine_type = Some(mtype.to_string());
                d.sensor_type = Some(f.sensor.as_str().to_string());
                corpus.sops.push(d);
                // Asked in the operator's words, naming the plant and the machine as people do.
                let lay = f.lay[rng.random_range(0..f.lay.len())];
                let query = match rng.random_range(0..3) {
                    0 => format!(
                        "{lay} on {} at {plant}, what's the procedure?",
                        MACHINE_LAY[t]
                    ),
                    1 => format!("{plant}: {lay} ({}). How do we fix it?", MACHINE_LAY[t]),
                    _ => format!(
                        "What should the technician do at {plant} when {lay} on {}?",
                        MACHINE_LAY[t]
                    ),
                };
                corpus.questions.push(Question {
                    query,
                    kind: "sop".into(),
                    answers: vec![doc_id],
                });
            }
        }
    }
    for w in 0..cfg.warehouses {
        let wh = reference::warehouse_id(w);
        for (i, (title, text, asks)) in PROCESSES.iter().enumerate() {
            let doc_id = format!("SOP-{wh}-P{}", i + 1);
            let body = format!(
                "Standard operating procedure {doc_id} for warehouse {wh} ({region}).\n\n{text}\n\n\
                 Responsibilities: the shift lead of {wh} owns this procedure; deviations are \
                 recorded in the warehouse log and reviewed weekly.\n\n\
                 Training: every operator working this process completes the induction module \
                 and is observed twice by the shift lead before working alone. Records are kept \
                 for two years and audited by the regional quality team.",
                region = reference::warehouse_region(w),
            );
            let at = issued + Duration::days(rng.random_range(0..300));
            let mut d = blank(doc_id.clone(), "sop", format!("{title} ({wh})"), body, at);
            d.warehouse_id = Some(wh.clone());
            d.region = Some(reference::warehouse_region(w).to_string());
            corpus.sops.push(d);
            let ask = asks[rng.random_range(0..asks.len())];
            corpus.questions.push(Question {
                query: format!("{ask} in {wh}?"),
                kind: "sop".into(),
                answers: vec![doc_id],
            });
        }
    }
}

fn incidents(cfg: &SimulateConfig, rng: &mut ChaCha8Rng, corpus: &mut Corpus) {
    let begin = cfg.start - Duration::days(HISTORY_DAYS);
    let plan = FaultPlan::draw(
        cfg.seed,
        cfg.devices,
        begin,
        Duration::days(HISTORY_DAYS),
        &FaultRates::default(),
    );
    let mut by_machine_failure: std::collections::BTreeMap<(usize, usize), Vec<String>> =
        Default::default();
    for fault in plan.faults() {
        let doc_id = format!("INC-{}", fault.id.trim_start_matches("F-"));
        let d = fault_report(doc_id.clone(), fault, None, rng);
        by_machine_failure
            .entry((reference::machine_of(fault.device), fault_failure(fault)))
            .or_default()
            .push(doc_id);
        corpus.incidents.push(d);
    }
    // "Has this happened before?" for a sample of machine × failure pairs.
    let pairs: Vec<_> = by_machine_failure.into_iter().collect();
    for ((machine, fi), docs) in pairs.choose_multiple(rng, 150) {
        let f = &FAILURES[*fi];
        let lay = f.lay[rng.random_range(0..f.lay.len())];
        let mid = reference::machine_id(*machine);
        let query = match rng.random_range(0..3) {
            0 => format!("Has {mid} had this before: {lay}?"),
            1 => format!("{mid} — {lay}. Did that happen earlier and what did we do?"),
            _ => format!("Any past incidents where {lay} on {mid}?"),
        };
        corpus.questions.push(Question {
            query,
            kind: "incident".into(),
            answers: docs.clone(),
        });
    }
}

const TECHNICIANS: [&str; 6] = [
    "K. Nowak",
    "R. Silva",
    "J. Weber",
    "M. Rossi",
    "T. Okafor",
    "L. Chen",
];

/// The index in [`FAILURES`] of what `fault` is.
fn fault_failure(fault: &Fault) -> usize {
    failure_index(
        SensorType::ALL[fault.device % SensorType::ALL.len()],
        fault.kind,
    )
}

/// A technician's report of `fault`, once it is over; `alert` is the maintenance alert that
/// called the technician out, when one did (severity and what it said).
fn fault_report(
    doc_id: String,
    fault: &Fault,
    alert: Option<(&str, &str)>,
    rng: &mut ChaCha8Rng,
) -> Document {
    let machine = reference::machine_of(fault.device);
    let sensor = SensorType::ALL[fault.device % SensorType::ALL.len()];
    let f = &FAILURES[fault_failure(fault)];
    let mid = reference::machine_id(machine);
    let mtype = machine_type(machine);
    let plant = reference::plant_id(machine);
    let minutes = (fault.end - fault.start).num_minutes().max(1);
    let tech = TECHNICIANS[rng.random_range(0..TECHNICIANS.len())];
    let action = f.steps[rng.random_range(0..f.steps.len())];
    let outcome = [
        "The asset returned to normal operation the same shift.",
        "Production resumed after a short stop; no parts were scrapped.",
        "The line ran at reduced speed until the end of the shift.",
        "A follow-up work order was opened for the next planned stop.",
    ][rng.random_range(0..4)];
    let called = alert.map_or(String::new(), |(severity, detail)| {
        format!(" Raised by a {severity} maintenance alert ({detail}).")
    });
    let body = format!(
        "Incident report {doc_id}. Asset {mid} ({mtype}) at {plant}, sensor {device} \
         ({sensor}). Detected {start} and lasted about {minutes} minutes.{called}\n\n\
         Observation: monitoring showed {technical}. Likely cause: {cause}.\n\n\
         Action taken by {tech}: {action}. {outcome}\n\n\
         Lessons: see the standard operating procedure for {title_lower} on the {mtype}.",
        device = reference::device_id(fault.device),
        sensor = sensor.as_str(),
        start = fault.start.format("%Y-%m-%d %H:%M UTC"),
        technical = f.technical,
        cause = f.cause,
        title_lower = f.title.to_lowercase(),
    );
    let mut d = blank(
        doc_id,
        "incident",
        format!("{} on {mid} ({mtype}, {plant})", f.title),
        body,
        fault.end,
    );
    d.plant_id = Some(plant);
    d.machine_id = Some(mid);
    d.machine_type = Some(mtype.to_string());
    d.sensor_type = Some(sensor.as_str().to_string());
    d
}

fn proposals(
    cfg: &SimulateConfig,
    data: &ReferenceData,
    rng: &mut ChaCha8Rng,
    corpus: &mut Corpus,
) {
    let mut asked = Vec::new();
    for (i, c) in data.customers.iter().enumerate() {
        let n = 1 + usize::from(rng.random_bool(0.4));
        let lines = rand::seq::index::sample(rng, PRODUCT_LINES.len(), n);
        for (k, line) in lines.into_iter().enumerate() {
            let doc_id = format!("PROP-{}-{}", c.customer_id.trim_start_matches("C-"), k + 1);
            let terms = Terms::draw(rng);
            let at = cfg.start - Duration::days(rng.random_range(1..540));
            corpus
                .proposals
                .push(proposal(doc_id.clone(), data, c, line, terms, at, rng));
            asked.push((i, line, doc_id));
        }
    }
    for (i, line, doc_id) in asked.choose_multiple(rng, 150) {
        let c = &data.customers[*i];
        let lay = PRODUCT_LINES[*line].2;
        let query = match rng.random_range(0..3) {
            0 => format!("What did we offer {} for {lay}?", c.name),
            1 => format!("Which deal did {} get from us on {lay}?", c.name),
            _ => format!("Remind me of our pricing for {} on {lay}", c.name),
        };
        corpus.questions.push(Question {
            query,
            kind: "proposal".into(),
            answers: vec![doc_id.clone()],
        });
    }
}

/// The commercial terms of a proposal.
struct Terms {
    discount: u32,
    volume: u32,
    months: u32,
}

impl Terms {
    fn draw(rng: &mut ChaCha8Rng) -> Terms {
        Terms {
            discount: rng.random_range(3..15),
            volume: rng.random_range(2..40) * 500,
            months: [12, 24, 36][rng.random_range(0..3)],
        }
    }
}

/// Account manager's proposal to customer `c` for product line `line`, written at `at`.
fn proposal(
    doc_id: String,
    data: &ReferenceData,
    c: &reference::Customer,
    line: usize,
    Terms {
        discount,
        volume,
        months,
    }: Terms,
    at: DateTime<Utc>,
    rng: &mut ChaCha8Rng,
) -> Document {
    let (category, programme, _) = PRODUCT_LINES[line];
    let part = data
        .parts
        .iter()
        .filter(|p| p.category == category)
        .nth(rng.random_range(0..20))
        .or_else(|| data.parts.first());
    let body = format!(
        "Commercial proposal {doc_id} for {name} ({segment}, {region}), prepared by \
         account manager {am}.\n\n\
         We propose a {months}-month {programme} covering an annual volume of {volume} \
         units in the {category} range, led by {part_name}. Pricing: {discount}% below \
         list on the whole range, fixed for the first twelve months, with quarterly \
         volume reviews.\n\n\
         Service: consignment stock at the customer's site, replenished weekly; a named \
         contact for escalations; delivery performance reported monthly.\n\n\
         Valid for 60 days from {date}.",
        name = c.name,
        segment = c.segment,
        region = c.region,
        am = c.account_manager,
        part_name = part.map(|p| p.name.as_str()).unwrap_or(category),
        date = at.format("%Y-%m-%d"),
    );
    let mut d = blank(
        doc_id,
        "proposal",
        format!("{programme} for {}", c.name),
        body,
        at,
    );
    d.region = Some(c.region.clone());
    d.customer_id = Some(c.customer_id.clone());
    d.account_manager = Some(c.account_manager.clone());
    d.part_id = part.map(|p| p.part_id.clone());
    d.supplier_id = part.map(|p| p.supplier_id.clone());
    d
}

/// One sale in this many is followed by a proposal from the customer's account manager.
pub const PROPOSAL_EVERY_SALES: u32 = 8;

/// How long after a fault's end its maintenance alert can still be traced back to it.
const ALERT_TRACE: Duration = Duration::hours(2);

/// A maintenance alert as `mfg.alerts` carries it (the fields the technicians read).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub source: String,
    /// For maintenance alerts, the machine.
    pub signal_key: String,
    pub severity: String,
    pub detail: String,
    pub signal_ts: DateTime<Utc>,
}

/// The people who write documents while the simulation runs: technicians answer maintenance
/// alerts with incident reports (diagnosing the injected fault behind the alert, if there is
/// one), and account managers follow one sale in [`PROPOSAL_EVERY_SALES`] up with a proposal.
/// Deterministic for a seed and a sequence of sales and alerts.
pub struct Authors {
    rng: ChaCha8Rng,
    data: ReferenceData,
    run_id: String,
    proposals: u64,
}

impl Authors {
    pub fn new(cfg: &SimulateConfig, run_id: &str) -> Authors {
        Authors {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xa07_4025),
            data: reference::generate(cfg),
            run_id: run_id.to_string(),
            proposals: 0,
        }
    }

    /// The proposal that follows a sale to customer index `customer` at `at`, if this sale
    /// gets one.
    pub fn after_sale(&mut self, customer: usize, at: DateTime<Utc>) -> Option<Document> {
        if !self.rng.random_ratio(1, PROPOSAL_EVERY_SALES) {
            return None;
        }
        let c = self.data.customers.get(customer)?.clone();
        self.proposals += 1;
        let doc_id = format!(
            "PROP-{}-{}-{}",
            c.customer_id.trim_start_matches("C-"),
            self.run_id,
            self.proposals
        );
        let line = self.rng.random_range(0..PRODUCT_LINES.len());
        let terms = Terms::draw(&mut self.rng);
        Some(proposal(
            doc_id,
            &self.data,
            &c,
            line,
            terms,
            at,
            &mut self.rng,
        ))
    }

    /// The incident report answering a maintenance alert (other alerts: none); `faults` are
    /// the faults injected into the live telemetry, which the technicians find. Reports are
    /// keyed by the alert, so an alert seen twice gives the same document id.
    pub fn answer_alert(&mut self, alert: &Alert, faults: Option<&FaultPlan>) -> Option<Document> {
        if alert.source != "iot.maintenance_alerts" {
            return None;
        }
        let machine = reference::machine_index(&alert.signal_key)?;
        // `iot.maintenance_alerts:M-012:HIGH:2026-11-01` → `INC-M-012-HIGH-2026-11-01`.
        let key = alert
            .alert_id
            .strip_prefix(alert.source.as_str())
            .unwrap_or(&alert.alert_id);
        let doc_id = format!("INC-{}", key.trim_start_matches(':').replace(':', "-"));
        let called = Some((alert.severity.as_str(), alert.detail.as_str()));
        let sensors = SensorType::ALL.len();
        let fault = faults.and_then(|plan| {
            (machine * sensors..(machine + 1) * sensors)
                .find_map(|d| plan.near(d, alert.signal_ts, ALERT_TRACE))
        });
        if let Some(fault) = fault {
            return Some(fault_report(doc_id, fault, called, &mut self.rng));
        }
        // Nothing injected behind it: the technician finds nothing wrong.
        let mid = reference::machine_id(machine);
        let mtype = machine_type(machine);
        let plant = reference::plant_id(machine);
        let tech = TECHNICIANS[self.rng.random_range(0..TECHNICIANS.len())];
        let body = format!(
            "Incident report {doc_id}. Asset {mid} ({mtype}) at {plant}. A {severity} \
             maintenance alert ({detail}) was raised at {at}.\n\n\
             Observation: {tech} inspected the asset on site; readings were back inside the \
             control band and no mechanical or instrumentation defect was found.\n\n\
             Action taken: none beyond the inspection; the asset stayed in production. The \
             alert is recorded as unconfirmed so that a recurrence can be compared with it.",
            severity = alert.severity,
            detail = alert.detail,
            at = alert.signal_ts.format("%Y-%m-%d %H:%M UTC"),
        );
        let mut d = blank(
            doc_id,
            "incident",
            format!("Unconfirmed maintenance alert on {mid} ({mtype}, {plant})"),
            body,
            alert.signal_ts,
        );
        d.plant_id = Some(plant);
        d.machine_id = Some(mid);
        d.machine_type = Some(mtype.to_string());
        Some(d)
    }
}

impl Document {
    /// The document as an upsert on `mfg.knowledge.documents`.
    pub fn upsert(&self, event_id: String) -> crate::model::events::DocumentEvent {
        crate::model::events::DocumentEvent {
            event_id,
            doc_id: self.doc_id.clone(),
            op: "upsert".into(),
            kind: self.kind.clone(),
            title: Some(self.title.clone()),
            body: Some(self.body.clone()),
            plant_id: self.plant_id.clone(),
            warehouse_id: self.warehouse_id.clone(),
            region: self.region.clone(),
            customer_id: self.customer_id.clone(),
            account_manager: self.account_manager.clone(),
            machine_id: self.machine_id.clone(),
            machine_type: self.machine_type.clone(),
            sensor_type: self.sensor_type.clone(),
            part_id: self.part_id.clone(),
            supplier_id: self.supplier_id.clone(),
            created_at: Some(self.created_at),
            ts: self.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_corpus_has_the_sizes_the_brief_asks_for_and_is_deterministic() {
        let cfg = crate::config::Config::defaults().simulate;
        let data = reference::generate(&cfg);
        let a = generate(&cfg, &data);
        assert!(a.sops.len() >= 200, "{} SOPs", a.sops.len());
        assert!(a.incidents.len() >= 2000, "{} incidents", a.incidents.len());
        assert!(a.proposals.len() >= 600, "{} proposals", a.proposals.len());
        assert!(a.questions.len() >= 300, "{} questions", a.questions.len());
        let b = generate(&cfg, &data);
        assert_eq!(a.sops, b.sops);
        assert_eq!(a.incidents, b.incidents);
        assert_eq!(a.proposals, b.proposals);
        // Every answer names a document of the question's kind, and every document carries a
        // tenant column (the row filters have something to hold on to).
        let ids: std::collections::HashMap<&str, &str> = a
            .sops
            .iter()
            .chain(&a.incidents)
            .chain(&a.proposals)
            .map(|d| (d.doc_id.as_str(), d.kind.as_str()))
            .collect();
        assert_eq!(
            ids.len(),
            a.sops.len() + a.incidents.len() + a.proposals.len(),
            "ids unique"
        );
        for q in &a.questions {
            for id in &q.answers {
                assert_eq!(ids.get(id.as_str()), Some(&q.kind.as_str()), "{q:?}");
            }
        }
        for d in a.sops.iter().chain(&a.incidents).chain(&a.proposals) {
            assert!(
                d.plant_id.is_some() || d.warehouse_id.is_some() || d.customer_id.is_some(),
                "{} has no tenant column",
                d.doc_id
            );
            assert!(
                d.body.split_whitespace().count() >= 60,
                "{} is too short",
                d.doc_id
            );
        }
    }

    fn maintenance_alert(machine: &str, at: DateTime<Utc>) -> Alert {
        Alert {
            alert_id: format!(
                "iot.maintenance_alerts:{machine}:HIGH:{}",
                at.format("%Y-%m-%d")
            ),
            source: "iot.maintenance_alerts".into(),
            signal_key: machine.into(),
            severity: "HIGH".into(),
            detail: "14 anomalies in 4 of 6 ten-minute windows (vibration)".into(),
            signal_ts: at,
        }
    }

    #[test]
    fn technicians_answer_maintenance_alerts_with_the_fault_they_find() {
        let cfg = crate::config::Config::defaults().simulate;
        let plan = FaultPlan::draw(
            cfg.seed,
            cfg.devices,
            cfg.start,
            Duration::days(30),
            &FaultRates::default(),
        );
        // A fault alone on its machine at its start (so the technician has one thing to find).
        let sensors = SensorType::ALL.len();
        let fault = plan
            .faults()
            .iter()
            .find(|f| {
                let m = reference::machine_of(f.device);
                (m * sensors..(m + 1) * sensors)
                    .filter(|&d| d != f.device)
                    .all(|d| plan.near(d, f.start, ALERT_TRACE).is_none())
            })
            .expect("a fault alone on its machine")
            .clone();
        let machine = reference::machine_id(reference::machine_of(fault.device));
        let failure = &FAILURES[fault_failure(&fault)];
        let mut authors = Authors::new(&cfg, "r1");
        let answer =
            |authors: &mut Authors, alert: &Alert| authors.answer_alert(alert, Some(&plan));
        // An alert while the fault is on: the report is about that fault, at the machine's plant.
        let alert = maintenance_alert(&machine, fault.start);
        let report = answer(&mut authors, &alert).expect("a report");
        assert_eq!(report.kind, "incident");
        assert_eq!(
            report.doc_id,
            format!("INC-{machine}-HIGH-{}", fault.start.format("%Y-%m-%d"))
        );
        assert!(report.title.starts_with(failure.title), "{}", report.title);
        assert!(report.body.contains(failure.technical), "{}", report.body);
        assert!(
            report.body.contains("HIGH maintenance alert"),
            "{}",
            report.body
        );
        assert_eq!(report.machine_id.as_deref(), Some(machine.as_str()));
        assert_eq!(
            report.plant_id,
            Some(reference::plant_id(reference::machine_of(fault.device)))
        );
        // The same alert again (a restarted feed) is the same document.
        assert_eq!(answer(&mut authors, &alert).unwrap().doc_id, report.doc_id);
        // Before any injected fault: nothing found, said so.
        let later = maintenance_alert(&machine, cfg.start - Duration::days(1));
        let quiet = answer(&mut authors, &later).expect("a report");
        assert!(quiet.title.starts_with("Unconfirmed"), "{}", quiet.title);
        assert_ne!(quiet.doc_id, report.doc_id);
        // Shortage and churn alerts are not the technicians' business; unknown machines neither.
        let mut shortage = maintenance_alert(&machine, fault.start);
        shortage.source = "supply_chain.shortage_signals".into();
        assert!(answer(&mut authors, &shortage).is_none());
        assert!(answer(&mut authors, &maintenance_alert("X-1", fault.start)).is_none());
        // What they write passes the document event's own validation.
        for d in [&report, &quiet] {
            let event = d.upsert("e-1".into());
            let bytes = serde_json::to_vec(&event).unwrap();
            assert_eq!(crate::model::EventKind::Document.check(&bytes), Ok(()));
        }
    }

    #[test]
    fn account_managers_follow_some_sales_with_a_proposal_for_that_customer() {
        let cfg = crate::config::Config::defaults().simulate;
        let data = reference::generate(&cfg);
        let mut authors = Authors::new(&cfg, "r1");
        let sales = 800;
        let proposals: Vec<Document> = (0..sales)
            .filter_map(|i| authors.after_sale(i % data.customers.len(), cfg.start))
            .collect();
        let expected = sales as f64 / PROPOSAL_EVERY_SALES as f64;
        assert!(
            (proposals.len() as f64 - expected).abs() < expected * 0.35,
            "{} proposals after {sales} sales",
            proposals.len()
        );
        let ids: std::collections::HashSet<_> = proposals.iter().map(|p| &p.doc_id).collect();
        assert_eq!(ids.len(), proposals.len(), "ids unique");
        for p in &proposals {
            let c = data
                .customers
                .iter()
                .find(|c| Some(&c.customer_id) == p.customer_id.as_ref())
                .expect("a known customer");
            assert_eq!(p.account_manager.as_ref(), Some(&c.account_manager));
            assert_eq!(p.region.as_ref(), Some(&c.region));
            assert!(p.body.contains(&c.name), "{}", p.body);
            let bytes = serde_json::to_vec(&p.upsert("e".into())).unwrap();
            assert_eq!(crate::model::EventKind::Document.check(&bytes), Ok(()));
        }
    }
}
