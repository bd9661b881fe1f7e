"""esikit configuration: edit the paths to point at your DeepSIF-style data.

Every key can be overridden on the command line, e.g.
``python train.py BATCH_SIZE=16 --NUM_EPOCHS 5`` (``--config other.py`` reads another
file). Relative paths are relative to the folder you run from. The defaults point at
the built-in dataset that ``make demo`` (or ``esikit simulate``) writes to
``data/default``. Every key, with its meaning and allowed values, is listed in
``esikit.config.KEYS``; values are checked before any data is touched.

``python train.py --resume`` continues ``checkpoints/<RUN_NAME>/``; it refuses a
configuration that differs from the run's (it lists each key, old -> new) unless
``--resume --force``, which applies the new values (e.g. the learning rate goes into the
optimizer) and records the change in the checkpoint and ``history.json``. Keys that do
not change the weights may change freely on resume (``esikit.config.RESUME_FREE_KEYS``):
TEST_METADATA_PATH, TEST_DATASET_LEN, CACHE_DIR, NUM_EPOCHS (except with
LR_SCHEDULE = 'cosine'), EARLY_STOPPING_PATIENCE, NUM_WORKERS, PIN_MEMORY, LOG_DIR,
CHECKPOINT_DIR, RUN_NAME, EVALUATE, BASELINES, EVAL_MAX_SAMPLES.
"""


class Config:
    # -- data -------------------------------------------------------------------------
    USE_METADATA_LOADER = True  # False: draw sample configurations on the fly (dynamic mode)
    TRAIN_METADATA_PATH = "data/default/source/train_sample_source1.mat"
    TEST_METADATA_PATH = "data/default/source/test_sample_source1.mat"
    NMM_SPIKES_DIR = "data/default/source/nmm_spikes"  # or a DeepSIF *_nmm.h5 file; None: beside the metadata
    FWD_MATRIX_PATH = "data/default/anatomy/leadfield_63_76.mat"
    TRAIN_DATASET_LEN = None  # None: every sample of the file
    TEST_DATASET_LEN = None
    VAL_SPLIT = 0.1
    NOISE = "white"  # sensor noise: "white" (DeepSIF's), "recorded" or "mixed" (needs NOISE_BANK_PATH)
    NOISE_BANK_PATH = None  # e.g. DeepSIF's anatomy/realistic_noise.mat, or the output of 'esikit noise-bank'

    # -- training ---------------------------------------------------------------------
    MODEL = "deepsif"  # see esikit.models.MODELS
    # Constructor arguments of the model, checked against it (a wrong name is reported with
    # the valid ones), e.g. {"n_hidden": 500, "n_lstm_layers": 3} for "deepsif".
    MODEL_KWARGS = {}
    BATCH_SIZE = 8
    NUM_EPOCHS = 100
    LEARNING_RATE = 1e-4
    NUM_WORKERS = 4
    PIN_MEMORY = True
    # Mixed precision, by a fixed rule (same command and seed -> same weights):
    # True: autocast on CUDA (bf16 where supported, else fp16), float32 on the CPU;
    # "bf16": bf16 autocast on any device (CPU too); "fp16": CUDA only; False: float32.
    USE_AMP = True
    SEED = 0
