"""esikit configuration: edit the paths to point at your DeepSIF-style data.

Every key can be overridden on the command line, e.g.
``python train.py BATCH_SIZE=16 --NUM_EPOCHS 5`` (``--config other.py`` reads another
file). Relative paths are relative to the folder you run from. The defaults point at
the built-in dataset that ``make demo`` (or ``esikit simulate``) writes to
``data/default``. Every key, with its meaning and allowed values, is listed in
``esikit.config.KEYS``; values are checked before any data is touched.
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

    # -- training ---------------------------------------------------------------------
    MODEL = "deepsif"  # see esikit.models.MODELS
    BATCH_SIZE = 8
    NUM_EPOCHS = 100
    LEARNING_RATE = 1e-4
    NUM_WORKERS = 4
    PIN_MEMORY = True
    USE_AMP = True
    SEED = 0
