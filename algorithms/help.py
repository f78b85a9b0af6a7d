"""All user-facing help text of the SoilSSL algorithms, kept in one place."""
import html

REFERENCE = ("Method: Tresson P. et al. (2024), Self-supervised learning of Vision Transformers "
             "for digital soil mapping using visual data, Geoderma.")

GEOGRAPHIC = ("Warning: the raster CRS ({crs}) is geographic (degrees): tiles have no fixed "
              "ground size (a tile is narrower towards the poles). Reproject the raster to a "
              "projected CRS (e.g. UTM) for soil mapping.")

GROUPS = {
    "features": "Feature extraction",
    "training": "Self-supervised training",
    "soil": "Soil mapping",
    "tools": "Tools",
}

PARAMS = {
    "INPUT_RASTER": "Raster layer to tile (an orthophoto, a satellite scene...).",
    "BANDS": "Band numbers fed to the ViT, in order (e.g. 4,3,2 for Sentinel-2 RGB). "
             "Default: the first 3 bands.",
    "DEM": "Optional elevation raster added as an extra channel; it is warped on the fly onto "
           "the image grid. Its patch-embedding weights are cloned from the R channel.",
    "BACKBONE": "Backbone weights: a SoilSSL checkpoint, an official DINO checkpoint "
                "(dino_vitbase16_pretrain.pth or a full training checkpoint), a timm state "
                "dict (.pth/.safetensors), or a timm pretrained name such as "
                "vit_base_patch16_224.dino already in the local cache. Nothing is downloaded.",
    "ARCH": "timm architecture, needed only when the file does not say and it cannot be "
            "inferred (e.g. vit_small_patch16_224).",
    "TILE_SIZE": "Tile size in pixels. 0 = the backbone's own (224 for ImageNet/DINO weights).",
    "STRIDE": "Step between tiles in pixels; one output pixel per step. 0 = TILE_SIZE.",
    "DEVICE": "auto picks CUDA when available, else the CPU.",
    "BATCH_SIZE": "Tiles per forward pass.",
    "AMP": "Mixed precision: auto (fp16 on CUDA, off on CPU), none, bf16 (also on CPU), fp16.",
    "POOL": "Tile feature: the CLS token (paper) or the mean of the patch tokens; patch: one "
            "output pixel per ViT patch (16 px; 14 for DINOv2) from one forward per tile, "
            "tiles overlapping by MARGIN patches whose central patches only are kept, so tile "
            "edges do not show (STRIDE is not used).",
    "MARGIN": "POOL=patch: patches of context dropped on each side of a tile (-1 = about "
              "1/6 of the tile's patches: 2 for 224 px tiles of 16 px patches, 10 x 10 kept). "
              "More margin: fewer seams, more tiles.",
    "POINT_FEATURE": "tile: the feature of the tile centred on each point (paper); patch: the "
                     "feature of the patch under each point, as POOL=patch maps it; both: "
                     "both in the same CV on the same folds (rows 'mlp' and 'mlp [patch]'...), "
                     "and the soil model maps with the one with the lower error (Predict soil "
                     "map then gives one pixel per patch).",
    "MIN_VALID": "Tiles with a smaller share of valid pixels (not nodata, alpha or mask, and "
                 "inside the raster) are skipped and give nodata.",
    "WORKERS": "Background threads reading tiles. Empty: 2 on the CPU (the model needs the "
               "cores), up to 8 when the model runs on a GPU (the readers are then the limit).",
    "K": "Number of K-means classes (the paper uses 8).",
    "SEED": "Random seed: the same seed gives the same result (sampling, K-means, folds, "
            "training order and crops).",
    "FEATURES": "A SoilSSL feature raster (from Extract ViT features).",
    "COMPARE_BACKBONE": "Optional second backbone (e.g. the ImageNet weights pretraining "
                        "started from): its feature methods are added to the same table.",
    "POINTS": "Soil sample points (any CRS; reprojected). Points outside the raster or on "
              "nodata are skipped and counted.",
    "FIELDS": "Soil properties to predict (numeric, or text holding numbers); several as "
              "a,b or a;b. NULLs are skipped per field.",
    "METHOD": "mlp: the paper's head on frozen features (768-512-512-1); ridge: linear probe; "
              "rf_features: random forest on ViT features; rf_pixels: random forest on the "
              "pixel covariates (the everyday baseline); rf_context: the covariates plus their "
              "mean and std over the tile window; rf_hybrid / gbm_hybrid: random forest / "
              "gradient boosting on the covariates plus the ViT features reduced by PCA "
              "(fitted in each training fold); all: every method on the same folds, mapped "
              "with their stack: a weighted mean of the methods, the weights (>= 0, sum 1) "
              "fitted to their out-of-fold predictions (one method with weight 1 is a plain "
              "choice) and pulled toward rf_pixels alone unless leaving out one fold at a "
              "time shows a steady gain: the shrinkage closest to rf_pixels within one "
              "standard error of the best (on few points, mostly rf_pixels). Numeric properties "
              "then add their out-of-fold residuals kriged from the points (regression "
              "kriging), in the share that leaving out one fold at a time shows to help "
              "steadily (often none). Its honest score is the row 'selected': each fold "
              "predicted with weights, and kriged residuals, from an inner CV on the other "
              "folds. METHOD=all also refits rf_pixels with 4 more random seeds on the same "
              "folds: the log, the CV table (seed_sd_percent) and the report say how far the "
              "baseline moves by itself, and whether each gain over it is beyond twice that.",
    "FOLDS": "Number of spatial folds: K-means clusters of the point coordinates (paper: 6).",
    "FOLD_MODE": "kmeans (spatial, paper), random folds for comparison, or knndm: folds "
                 "whose test-to-training distances match the distances from the raster's "
                 "pixels to the points (kNNDM, Linnenbrink et al. 2024, as CAST::knndm), so "
                 "that the CV error estimates the map's error; random when the points are "
                 "not clustered. The report compares the three (W statistic).",
    "LOSS": "MLP training loss: mse (paper), or huber / l1 against outliers.",
    "WEIGHT_FIELD": "Optional sample weights, e.g. to up-weight rare land covers.",
    "OUTPUT_POINTS": "The points with their fold, out-of-fold prediction and residual per "
                     "target and method.",
    "OUTPUT_MODEL": "Model file for Predict soil map: the chosen head (or stack) refitted on all points, "
                    "the per-fold heads, the backbone reference and checksum, normalisation.",
    "OUTPUT_REPORT": "HTML report: CV table, observed-vs-predicted plots, folds and residuals, "
                     "and the nearest-neighbour distances of the samples, the map and the "
                     "kmeans, random and knndm folds (as CAST::geodist) with their W.",
    "MODEL": "A model file written by Fit soil heads (any file extension: it is recognised "
             "by its content). BANDS and DEM left empty are taken from the model.",
    "POINTS_BUFFER": "Optional soil sample points: tiles within BUFFER px of any point are "
                     "left out of pretraining, so the backbone never learns their surroundings.",
    "BUFFER": "Exclusion buffer around the points, in pixels of the input: in metres it is "
              "BUFFER × the input's pixel size (paper: 448 px = 672 m at 1.5 m pixels; the log "
              "gives it for your raster). On dense points a large BUFFER leaves no tile: the "
              "error then names the largest BUFFER, or a smaller STRIDE, that leaves enough.",
    "ARCH_TRAIN": "timm ViT architecture (paper: vit_base_patch16_224; vit_tiny/vit_small "
                  "for laptops).",
    "INIT": "Initial weights (DINO ImageNet file, cached timm name, SoilSSL checkpoint); empty "
            "= random initialisation. A full DINO training checkpoint continues its "
            "projection head when OUT_DIM matches (official DINO: 65536).",
    "EPOCHS": "Total epochs; with RESUME the run continues up to this number.",
    "TILE_SIZE_TRAIN": "Tile (global crop) size in pixels (paper: 224).",
    "RESUME": "A checkpoint of an interrupted run: training continues from its last complete "
              "epoch.",
    "OUTPUT_CKPT": "SoilSSL checkpoint, written at the end of every epoch; use it as BACKBONE.",
    "BACKBONE_MOVED": "The backbone file, only if it moved since fitting (checked by checksum); "
                      "a model that maps with covariates only does not need it.",
    "STRIDE_PRED": "Prediction resolution: one output pixel per STRIDE px (0 = tile size). "
                   "A model fitted on patch features (POINT_FEATURE) maps one pixel per patch "
                   "and does not use STRIDE.",
    "OUTPUT_UNCERTAINTY": "Standard deviation of the per-fold models' predictions (with their "
                          "own kriged residuals when the stack adds residual kriging).",
    "OUTPUT_FEATURES": "The feature raster (float32, one band per feature dimension, NaN = "
                       "nodata tile).",
    "OUTPUT_CLUSTERS": "Class raster 0..K-1 (uint8, nodata 255), styled as a paletted map.",
    "OUTPUT_PCA": "3-band uint8 RGB raster (0 = nodata), styled as an RGB composite.",
    "OUTPUT_PREDICTION": "One float32 band per soil property (nodata -9999), styled with a "
                         "colour ramp over its own range.",
    "STRIDE_TRAIN": "Step of the grid training tiles are taken from (0 = TILE_SIZE); a "
                    "smaller step gives more, overlapping tiles.",
    "OUT_DIM": "Output dimension of the DINO projection head (DINO: 65536; smaller is faster "
               "and enough for one scene).",
    "LOCAL_CROPS": "Number of small local crops per tile in the multi-crop augmentation.",
    "LR": "Peak learning rate for a batch of 256 tiles (scaled linearly with BATCH_SIZE), "
          "cosine schedule after a warm-up: 1 epoch when INIT's DINO head is continued, "
          "otherwise 10 % of EPOCHS.",
    "OUTPUT_AOA": "Area of applicability (Meyer & Pebesma 2021, as CAST computes it), one per "
                  "soil property: its bands '<property>: inside AOA (1/0)' (0 where the "
                  "dissimilarity index is above the CV threshold) and '<property>: "
                  "dissimilarity index' (the predictors weighted by their importance in the "
                  "model), then with LPD '<property>: local point density'.",
    "LPD": "Adds a band per soil property to the area of applicability: the local point "
           "density, the number of training points whose dissimilarity to the tile is below "
           "the AOA threshold (CAST's LPD): 0 outside the AOA, larger where the model saw "
           "many similar points.",
    "OUTPUT_ERROR": "Expected error (RMSE) per pixel and property, as CAST's errorProfiles: "
                    "fitting related each point's dissimilarity index (against the other CV "
                    "folds) to its cross-validated error by a monotone (isotonic) curve; the map "
                    "reads that curve at each pixel's index. Beyond the largest index seen in "
                    "the cross-validation the curve stays flat, so outside the area of "
                    "applicability it is a lower bound.",
    "OUTPUT_LOWER": "Lower bound of the prediction interval at LEVEL, per property: "
                    "prediction − q·s, a conformal interval calibrated on the spatial-CV "
                    "residuals and scaled locally by the expected error s of the pixel's "
                    "dissimilarity index (wider where the map extrapolates).",
    "OUTPUT_UPPER": "Upper bound of the prediction interval at LEVEL (prediction + q·s).",
    "LEVEL": "Share of true values the interval should hold (0.9: 9 in 10). q is the "
             "⌈(n+1)·LEVEL⌉-th smallest CV conformity score |residual| / s of the n points; "
             "every score is kept in the model, so any LEVEL works without fitting again. The "
             "report of Fit soil heads gives the coverage measured on held-out folds.",
}

ALGS = {
    "extractfeatures": (
        "Extract ViT features",
        "Tiles the raster and passes each tile through a Vision Transformer backbone. The "
        "output is a float32 raster with one band per feature dimension and one pixel per "
        "tile step: it has the input's CRS and origin and a pixel STRIDE times larger: each "
        "pixel is the STRIDE cell its tile is centred on, so the map covers the input's "
        "extent. Edge tiles are padded; padding, nodata values, alpha bands and masks count "
        "as invalid, and tiles with less than MIN_VALID valid pixels give nodata. The "
        "normalisation used is stored in the raster's metadata.",
        ["INPUT_RASTER", "BANDS", "DEM", "BACKBONE", "ARCH", "TILE_SIZE", "STRIDE", "DEVICE",
         "BATCH_SIZE", "AMP", "POOL", "MARGIN", "MIN_VALID", "WORKERS", "OUTPUT_FEATURES"],
    ),
    "clustermap": (
        "Landscape clusters (K-means)",
        "Clusters the pixels of a feature raster with K-means (fitted on a random sample, "
        "applied window by window) into a single-band class raster (0..K-1, nodata 255), "
        "shown with a paletted style. The paper maps K = 8 landscape classes.",
        ["FEATURES", "K", "SEED", "OUTPUT_CLUSTERS"],
    ),
    "pcamap": (
        "PCA colour map of features",
        "Projects a feature raster on its first 3 principal components (fitted on a random "
        "sample) and writes a displayable 3-band uint8 raster, as in the paper: 1st "
        "component in red, 2nd in blue, 3rd in green, each stretched between its 2nd and "
        "98th percentiles (0 = nodata).",
        ["FEATURES", "SEED", "OUTPUT_PCA"],
    ),
    "pretrain": (
        "Pretrain backbone (DINO)",
        "Continues DINO training (Caron et al. 2021) of a ViT on tiles of your raster, without "
        "labels, so that its features describe your landscape: student and teacher networks, "
        "multi-crop augmentations suited to overhead imagery (flips, 90° rotations, colour "
        "changes on optical bands only, never on the DEM), teacher by EMA. Progress and the "
        "loss are logged per step; cancel keeps the last complete epoch's checkpoint. For "
        "large scenes, train on a GPU server with python -m soilssl.core.pretrain (torchrun "
        "for several GPUs) and use the checkpoint here.",
        ["INPUT_RASTER", "BANDS", "DEM", "POINTS_BUFFER", "BUFFER", "ARCH_TRAIN", "INIT",
         "EPOCHS", "TILE_SIZE_TRAIN", "STRIDE_TRAIN", "OUT_DIM", "LOCAL_CROPS", "LR", "SEED",
         "RESUME", "DEVICE", "BATCH_SIZE", "AMP", "WORKERS", "OUTPUT_CKPT"],
    ),
    "fitpoints": (
        "Fit soil heads (spatial CV)",
        "Predicts soil properties at sample points from the ViT features of the tile centred "
        "on each point, and judges every method by spatial cross-validation (folds = K-means "
        "of the point coordinates, or kNNDM folds matched to the map's distances): RMSE, "
        "MAE and R² per fold, mean ± std, as in the paper's Table 2. The CV table goes to "
        "the log, the report and, for models and scripts, the CV_TABLE output. The point "
        "tiles' features are cached in "
        "~/.cache/soilssl/point-features (a second fit on the same points skips the ViT); "
        "Tools ▸ Clear feature cache empties it.",
        ["INPUT_RASTER", "BANDS", "DEM", "BACKBONE", "ARCH", "COMPARE_BACKBONE", "POINTS",
         "FIELDS", "METHOD", "POINT_FEATURE", "FOLDS", "FOLD_MODE", "LOSS", "WEIGHT_FIELD", "SEED", "TILE_SIZE",
         "DEVICE", "BATCH_SIZE", "AMP", "WORKERS", "OUTPUT_POINTS", "OUTPUT_MODEL",
         "OUTPUT_REPORT"],
    ),
    "predictmap": (
        "Predict soil map",
        "Maps a model from Fit soil heads over a raster, tile by tile: one float32 band per "
        "soil property, aligned like the feature rasters, with the uncertainty (spread of the "
        "fold models) and the area of applicability where the model can be trusted; "
        "optionally the expected error and a prediction interval at LEVEL from the "
        "cross-validation residuals (models fitted before these existed must be fitted "
        "again for them). A model whose mapped methods read only covariates (a stack of "
        "rf_pixels and rf_context) maps without loading or running the ViT; its "
        "uncertainty map still runs it when a fold's stack used ViT features.",
        ["INPUT_RASTER", "BANDS", "DEM", "MODEL", "BACKBONE_MOVED", "STRIDE_PRED", "LEVEL",
         "DEVICE", "BATCH_SIZE", "AMP", "WORKERS", "OUTPUT_PREDICTION", "OUTPUT_UNCERTAINTY",
         "OUTPUT_AOA", "LPD", "OUTPUT_ERROR", "OUTPUT_LOWER", "OUTPUT_UPPER"],
    ),
    "clearcache": (
        "Clear feature cache",
        "Deletes the cached point features of Fit soil heads (~/.cache/soilssl/point-features, "
        "or $XDG_CACHE_HOME/soilssl/point-features): one file per backbone, raster and point "
        "set, kept so that a second fit on the same points skips the ViT. Clearing only costs "
        "time on the next fit. The log says how many files and megabytes were freed.",
        [],
    ),
}


# help keys that document a parameter under another name
ALIASES = {"INPUT_RASTER": "INPUT", "FEATURES": "INPUT", "BACKBONE_MOVED": "BACKBONE",
           "STRIDE_PRED": "STRIDE", "POINTS_BUFFER": "POINTS", "ARCH_TRAIN": "ARCH",
           "TILE_SIZE_TRAIN": "TILE_SIZE", "STRIDE_TRAIN": "STRIDE", "OUTPUT_CKPT": "OUTPUT",
           "OUTPUT_FEATURES": "OUTPUT", "OUTPUT_CLUSTERS": "OUTPUT", "OUTPUT_PCA": "OUTPUT",
           "OUTPUT_PREDICTION": "OUTPUT"}


def title(name: str) -> str:
    return ALGS[name][0]


def default_text(param) -> str:
    """A QgsProcessingParameterDefinition's default as the help shows it ('' if none)."""
    value = param.defaultValue()
    if value is None or value == "" or param.isDestination():
        return ""
    if param.type() == "enum":
        return param.options()[int(value)]
    return str(value)


def short_help(name: str, defaults=None, labels=None) -> str:
    """The Toolbox help: what it does, each parameter by the label its form shows (with
    ``labels``: name -> label, and ``defaults``: name -> text of its default value, from the
    parameter definitions), the paper reference."""
    _, text, params = ALGS[name]
    defaults = defaults or {}
    labels = labels or {}

    def item(key):
        param = ALIASES.get(key, key)
        default = f" <i>Default: {defaults[param]}.</i>" if defaults.get(param) else ""
        label = html.escape(labels.get(param, param), quote=False)
        return f"<li><b>{label}</b>: {PARAMS[key]}{default}</li>"

    items = "".join(item(p) for p in params)
    return f"<p>{text}</p><ul>{items}</ul><p><i>{REFERENCE}</i></p>"


def describe(key: str) -> str:
    return PARAMS[key]


# ---------------------------------------------------------------------------------------------
# Backbones (issue 14): timm ViT families, Download a backbone, comparison of several backbones
# in Fit soil heads.  Kept as one block so that a rewrite of the texts above can fold it in.
# ---------------------------------------------------------------------------------------------
def _recommended_html() -> str:
    from ..core.download import RECOMMENDED
    rows = "".join(f"<li><code>{r['name']}</code> ({r['family']}, {r['params_m']} M parameters, "
                   f"{r['size_mb']} MB, licence: {r['licence']}): {r['note']}.</li>"
                   for r in RECOMMENDED)
    return f"Recommended backbones for soil work:<ul>{rows}</ul>"


PARAMS.update({
    "BACKBONE": PARAMS["BACKBONE"] + " Every timm ViT family works: DINO (vit_*_patch16_224), "
                "DINOv2 (vit_*_patch14_reg4_dinov2: patch 14, register tokens) and DINOv3 "
                "(vit_*_patch16_dinov3, e.g. the satellite weights "
                "vit_large_patch16_dinov3.sat493m: RoPE, storage tokens), as timm, DINO or "
                "Meta files. Fetch named weights once with Download a backbone.",
    "ARCH": PARAMS["ARCH"] + " Other sizes take timm arguments after a colon: "
            "vit_small_patch16_dinov3:depth=6,embed_dim=384,num_heads=6.",
    "TILE_SIZE": PARAMS["TILE_SIZE"] + " It is rounded to a multiple of the backbone's patch "
                 "size (16; 14 for DINOv2), with a message.",
    "COMPARE_BACKBONES": "Several backbones to compare, separated by ';': files, cached timm "
                         "names, or random:<arch> (random initialisation, the baseline), e.g. "
                         "dino_site.pth;vit_large_patch16_dinov3.sat493m;"
                         "random:vit_base_patch16_224. A file whose architecture cannot be "
                         "inferred takes it after '@' (weights.pth@vit_small_patch16_dinov3), "
                         "else ARCH. Their feature methods run on the same points and folds "
                         "with the same heads; the log, the report and BACKBONE_RANKING rank "
                         "all backbones per property. The model maps with BACKBONE.",
    "NAME": "timm pretrained name (architecture.tag) whose weights are on the Hugging Face "
            "hub, e.g. vit_large_patch16_dinov3.sat493m (see the list above).",
    "SHA256": "Expected SHA-256 of the file; empty = the checksum the hub publishes for it "
              "(the file's SHA-256 is always computed and returned).",
    "FORCE": "Download again even when the file is already in the cache.",
})
ALGS["fitpoints"][2].insert(ALGS["fitpoints"][2].index("COMPARE_BACKBONE") + 1,
                            "COMPARE_BACKBONES")
ALGS["downloadbackbone"] = (
    "Download a backbone",
    "Downloads the weights of a named timm backbone once from the Hugging Face hub (or the "
    "mirror in the HF_ENDPOINT environment variable) into the local cache, with progress, "
    "cancel and a SHA-256 checksum. Afterwards the name works as BACKBONE or INIT offline. "
    "This is the only SoilSSL tool that uses the network: without internet, download the "
    "file elsewhere and give its path as BACKBONE. Check each model's licence: DINOv3 "
    "weights come under Meta's DINOv3 License, not an open-source licence.</p><p>" +
    _recommended_html(),
    ["NAME", "SHA256", "FORCE"],
)

# ---------------------------------------------------------------------------------------------
# Class targets (issue 12): TARGET_TYPE, CLASS_WEIGHTS, the class raster and its probability.
# ---------------------------------------------------------------------------------------------
PARAMS.update({
    "FIELDS": "Soil properties to predict: numeric fields, or class fields (a soil type, a "
              "land cover: see Target type); several as a,b or a;b. NULLs are skipped per "
              "field.",
    "TARGET_TYPE": "auto: a text field whose values are not numbers, or an integer field "
                   "with at most 20 distinct values and fewer than 10 % of the points, is a "
                   "class target; every other field is a soil property (regression). "
                   "regression / classification: every field in FIELDS is that type. Class "
                   "targets get a random forest classifier (rf_*), the MLP with cross-entropy "
                   "(mlp) and multinomial logistic regression (the ridge row); the CV reports "
                   "accuracy, balanced accuracy, Cohen's kappa, macro F1 and the confusion "
                   "matrix, and METHOD=all maps with the highest out-of-fold kappa.",
    "CLASS_WEIGHTS": "Class targets: weight each training point by the inverse frequency of "
                     "its class ('balanced'), so that rare classes count as much as common "
                     "ones (the paper found rare land covers predicted worst).",
    "OUTPUT_PROBABILITY": "Class targets: two bands per class target, the probability of the "
                          "mapped class and the entropy of the class probabilities (0 = one "
                          "class certain, 1 = all classes equally likely). For a class "
                          "target, Prediction holds the class (paletted, labelled by class "
                          "name) and Uncertainty the share of fold models that predict "
                          "another class.",
})
ALGS["fitpoints"][2].insert(ALGS["fitpoints"][2].index("LOSS") + 1, "TARGET_TYPE")
ALGS["fitpoints"][2].insert(ALGS["fitpoints"][2].index("TARGET_TYPE") + 1, "CLASS_WEIGHTS")
ALGS["predictmap"][2].append("OUTPUT_PROBABILITY")
PARAMS["OUTPUT_POINTS"] += (" For a class target: the predicted class name and its "
                            "probability per method.")

# ---------------------------------------------------------------------------------------------
# Trust and act on the map (issue 13 parts 5-6): Similarity map and Sampling design.  One block,
# like the one above, so that other branches' help edits do not meet it.
# ---------------------------------------------------------------------------------------------
PARAMS.update({
    "REFERENCES": "Reference places: points (the tile each falls in) or polygons (every tile "
                  "they touch), in any CRS; with 'Selected features only' a few pits or one "
                  "field of a larger layer.",
    "THRESHOLD": "Optional: tiles with a similarity at or above it are 1 in the mask output "
                 "(cosine similarity, -1..1; with CENTRE, 0.5 is already close).",
    "CENTRE": "Subtract the scene's mean feature from every feature first (recommended): raw "
              "ViT features share a large common part, so their plain cosines all lie near 1.",
    "OUTPUT_SIMILARITY": "Cosine similarity of each tile's feature to the references' mean "
                         "feature (float32, -1..1, nodata -9999), on the feature raster's grid.",
    "OUTPUT_MASK": "Optional 1/0 mask of the tiles at or above THRESHOLD (255 = nodata).",
    "POINTS_EXISTING": "The soil samples you already have (any CRS). Their tiles' features "
                       "are the reference of the area of applicability; new sites keep "
                       "MIN_DISTANCE from them.",
    "N": "How many new sites to propose.",
    "MIN_DISTANCE": "Minimum distance, in the feature raster's map units, between two new "
                    "sites and between a new site and an existing sample (0 = only never "
                    "on a sampled tile).",
    "METHOD_DESIGN": "coverage: K-means in the space of the leading feature principal "
                     "components with the existing samples as fixed centres (as spcosa does "
                     "with prior points); tiles outside the area of applicability weigh "
                     "more, so sites go where the map cannot be trusted. clhs: conditioned "
                     "Latin hypercube on the same components plus COVARIATES, keeping the "
                     "existing samples (as clhs must.include), cost-constrained with COST "
                     "(Roudier et al. 2012).",
    "COST": "Optional cost or access raster (e.g. travel time), any grid and CRS; averaged "
            "over each tile. Nodata = inaccessible: no site goes there. Sites prefer cheap "
            "tiles by COST_WEIGHT.",
    "EXCLUDE": "Optional polygons where no site may go (buildings, protected areas...).",
    "COVARIATES_DESIGN": "Optional covariate rasters (DEM, EC, climate...), any grid and CRS, "
                  "averaged over each tile: cLHS stratifies them with the feature components, "
                  "and the report compares with cLHS on the covariates alone.",
    "MODEL_DESIGN": "Optional model from Fit soil heads fitted with the feature raster's "
                    "backbone: each site gets its predicted value (pred_), the spread of the "
                    "fold models (spread_) and, for models with prediction intervals, the "
                    "width of the LEVEL interval (width_).",
    "LEVEL_DESIGN": "Level of the prediction intervals whose width is given (MODEL).",
    "COST_WEIGHT": "Weight of the cost (scaled 0..1) against feature-space coverage or the "
                   "cLHS objective; 0 = cost only excludes nodata tiles.",
    "N_PCS": "Principal components of the features that span the design's feature space.",
    "N_RANDOM": "Random designs of N sites (same spacing) the AOA growth is compared with.",
    "OUTPUT_SITES": "The proposed sites (tile centres) with rank (1 = the most dissimilar to "
                    "the existing samples: sample first), di (dissimilarity index before "
                    "sampling), inside_aoa, cost, the model's values and the reason for each.",
    "OUTPUT_REPORT_DESIGN": "Optional HTML report: share of the tiles inside the area of "
                            "applicability now, with the proposed sites, with random sites "
                            "(mean ± std) and with cLHS on the covariates alone; the sites in "
                            "feature space.",
})
ALIASES.update({"OUTPUT_SIMILARITY": "OUTPUT", "POINTS_EXISTING": "POINTS",
                "METHOD_DESIGN": "METHOD", "MODEL_DESIGN": "MODEL",
                "COVARIATES_DESIGN": "COVARIATES", "LEVEL_DESIGN": "LEVEL",
                "OUTPUT_SITES": "OUTPUT", "OUTPUT_REPORT_DESIGN": "OUTPUT_REPORT"})
ALGS["similaritymap"] = (
    "Similarity map",
    "Where else does the landscape look like this pit or this field? Averages the features of "
    "the tiles under the reference points or polygons and maps the cosine similarity of every "
    "tile of a feature raster to that mean, window by window (rasters of any size), with an "
    "optional mask of the tiles above THRESHOLD.",
    ["FEATURES", "REFERENCES", "THRESHOLD", "CENTRE", "OUTPUT_SIMILARITY", "OUTPUT_MASK"],
)
ALGS["samplingdesign"] = (
    "Sampling design (next sites)",
    "Proposes N new soil sample sites on a feature raster where they make the map most "
    "trustworthy: in the parts of the landscape (in ViT feature space) that the existing "
    "samples do not represent. The log and the report say how much the area of applicability "
    "(AOA) would grow if the sites were sampled (their features join the existing samples' "
    "dissimilarity reference and the AOA is recomputed), against random designs of the same "
    "size and, with covariates, cLHS on the covariates alone. Sites are tile centres, at "
    "least MIN_DISTANCE apart, outside EXCLUDE and where COST has a value.",
    ["FEATURES", "POINTS_EXISTING", "N", "MIN_DISTANCE", "METHOD_DESIGN", "COST", "EXCLUDE",
     "COVARIATES_DESIGN", "MODEL_DESIGN", "LEVEL_DESIGN", "COST_WEIGHT", "N_PCS", "N_RANDOM", "SEED",
     "OUTPUT_SITES", "OUTPUT_REPORT_DESIGN"],
)

# ---------------------------------------------------------------------------------------------
# Covariates (issue 12): every band of INPUT plus covariate rasters as pixel covariates.
# ---------------------------------------------------------------------------------------------
PARAMS.update({
    "COVARIATES": "Optional covariate rasters (terrain, climate, other satellite bands...), "
                  "any number, in any CRS and resolution: each is warped onto INPUT's grid "
                  "(bilinear) and every band of it becomes a pixel covariate, next to every "
                  "band of INPUT (not only BANDS) and the DEM. rf_pixels uses them at the "
                  "point; the model records the files (path, bands, checksum).",
    "COVARIATES_CATEGORICAL": "Covariate rasters holding classes (geology, soil map, land "
                              "cover codes): sampled with nearest resampling and one-hot "
                              "encoded (one 0/1 column per class found at the points, named "
                              "like soilmap=3). Layers listed here are covariates even if not "
                              "listed in COVARIATES.",
    "COVARIATES_PRED": "Only if the model's covariate rasters moved, or to map another area: "
                       "replacements for them, as many as the model has and in the same "
                       "order, each with the same number of bands. Empty: the files recorded "
                       "in the model are used.",
})
ALIASES["COVARIATES_PRED"] = "COVARIATES"
ALGS["fitpoints"][2].insert(ALGS["fitpoints"][2].index("FIELDS") + 1, "COVARIATES")
ALGS["fitpoints"][2].insert(ALGS["fitpoints"][2].index("COVARIATES") + 1,
                            "COVARIATES_CATEGORICAL")
ALGS["predictmap"][2].insert(ALGS["predictmap"][2].index("BACKBONE_MOVED") + 1,
                             "COVARIATES_PRED")
